"""The plan as Kubernetes objects: every GPU profile renders, valid against the real schemas,
and the pods carry what the plan says (GPUs, shared memory, network, launch command)."""

from __future__ import annotations

import shlex

import pytest
import yaml
from conftest import RUNTIMES, fitting_profiles, gpu_profiles, rendered
from k8s_schemas import UPSTREAM, validate

from nemodeploy.backends.vllm import launch_nodes, serve_argv
from nemodeploy.k8s.pods import RenderError
from nemodeploy.topology.loader import load, loads

GiB = 2**30


def pods(workload: dict) -> list[tuple[dict, int]]:
    """(pod template, how many pods) of a RayCluster or LeaderWorkerSet."""
    spec = workload["spec"]
    if workload["kind"] == "RayCluster":
        return [(spec["headGroupSpec"]["template"], 1),
                *((g["template"], g["replicas"]) for g in spec["workerGroupSpecs"])]
    group = spec["leaderWorkerTemplate"]
    return [(group["leaderTemplate"], 1), (group["workerTemplate"], group["size"] - 1)]


def container(template: dict) -> dict:
    return template["spec"]["containers"][0]


def env(template: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(template)["env"]}


def workload_of(objs: dict) -> dict:
    return objs.get("RayCluster") or objs["LeaderWorkerSet"]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("profile", gpu_profiles())
def test_every_gpu_profile_renders_valid_objects_or_says_why_not(profile, runtime):
    topology = load(profile)
    try:
        dep, objs = rendered(topology, runtime)
    except RenderError as err:
        assert "\n" not in str(err)
        assert "does not fit" in str(err), "only a plan that does not fit may refuse here"
        return
    workload = {"kuberay": "RayCluster", "leaderworkerset": "LeaderWorkerSet"}[runtime]
    assert list(objs) == ["ConfigMap", "Service", workload]
    for obj in objs.values():
        validate(obj)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("profile", fitting_profiles())
def test_pods_request_exactly_the_plans_gpus_and_shared_memory(profile, runtime):
    dep, objs = rendered(load(profile), runtime)
    plan = dep.plan
    per_node = {}
    for rank in plan.ranks:
        per_node[rank.node] = per_node.get(rank.node, 0) + 1
    total = 0
    for template, count in pods(workload_of(objs)):
        limits = container(template)["resources"]["limits"]
        gpus = int(limits.get("nvidia.com/gpu") or limits["amd.com/gpu"])
        assert gpus in per_node.values()
        total += gpus * count
        shm = next(v for v in template["spec"]["volumes"] if v["name"] == "dshm")["emptyDir"]
        factor = 2 if runtime == "kuberay" else 1  # Ray's object store lives in /dev/shm too
        assert shm == {"medium": "Memory", "sizeLimit": f"{gpus * factor}Gi"}
    assert total == plan.parallel.world_size
    assert len(launch_nodes(dep.spec.topology, plan)) == sum(count for _, count in pods(workload_of(objs)))


def test_rdma_nodes_get_the_host_network_the_rdma_device_and_the_topologys_interfaces():
    _, objs = rendered(load("h100-16x-bf16"), "leaderworkerset")
    for template, _ in pods(objs["LeaderWorkerSet"]):
        assert template["spec"]["hostNetwork"] is True
        assert template["spec"]["dnsPolicy"] == "ClusterFirstWithHostNet"
        assert container(template)["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
        assert container(template)["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
        variables = env(template)
        assert variables["NCCL_SOCKET_IFNAME"] == variables["GLOO_SOCKET_IFNAME"] == "ibp0s0"
        assert variables["VLLM_HOST_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}


RDMA_TOPOLOGY = """
name: roce
nodes:
  - {name: a, address: 10.0.0.1, accelerators: {kind: h200, count: 8},
     nics: [{name: ens1f0, rdma: true, hca: mlx5_0, mtu: 9000}, {name: ens2f0, rdma: true, hca: mlx5_1}]}
  - {name: b, address: 10.0.0.2, accelerators: {kind: h200, count: 8},
     nics: [{name: ens1f0, rdma: true, hca: mlx5_0, mtu: 9000}, {name: ens2f0, rdma: true, hca: mlx5_1}]}
interconnect: {inter_node: roce-200g}
model: {id: nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-BF16, precision: bf16}
engine: {kind: vllm}
serving: {max_context: 32768, concurrency: 4, kv_cache_dtype: fp8}
"""


def test_a_secondary_network_attaches_each_rdma_nic_under_its_topology_name():
    _, objs = rendered(loads(RDMA_TOPOLOGY), "kuberay", network={"secondaryNetwork": "fabric/roce"})
    validate(objs["RayCluster"])
    for template, _ in pods(objs["RayCluster"]):
        assert "hostNetwork" not in template["spec"]
        attachments = template["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"]
        assert attachments == ('[{"name": "roce", "namespace": "fabric", "interface": "ens1f0"}, '
                               '{"name": "roce", "namespace": "fabric", "interface": "ens2f0"}]')
        variables = env(template)
        assert variables["NCCL_SOCKET_IFNAME"] == variables["GLOO_SOCKET_IFNAME"] == "eth0"
        assert variables["NCCL_IB_HCA"] == "mlx5_0,mlx5_1"


def test_host_network_and_a_secondary_network_exclude_each_other():
    with pytest.raises(ValueError, match="exclude each other"):
        rendered(loads(RDMA_TOPOLOGY), network={"hostNetwork": True, "secondaryNetwork": "roce"})


def test_no_rdma_nic_means_the_pod_network_and_no_rdma_resource():
    _, objs = rendered(load("mi300x-8x-bf16"), "kuberay")
    head = objs["RayCluster"]["spec"]["headGroupSpec"]["template"]
    assert "hostNetwork" not in head["spec"]
    assert container(head)["resources"] == {"limits": {"amd.com/gpu": "8"}}


@pytest.mark.parametrize("profile, resource, selector, taint", [
    ("h100-16x-bf16", "nvidia.com/gpu", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, "nvidia.com/gpu"),
    ("gb200-4x-nvfp4", "nvidia.com/gpu", {"nvidia.com/gpu.product": "NVIDIA-GB200"}, "nvidia.com/gpu"),
    ("mi300x-8x-bf16", "amd.com/gpu", {"amd.com/gpu.device-id": "74a1"}, "amd.com/gpu"),
])
def test_node_selector_and_tolerations_follow_the_accelerator_kind(profile, resource, selector, taint):
    _, objs = rendered(load(profile), "kuberay", nodeSelector={"pool": "serving"},
                       tolerations=[{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}])
    for template, _ in pods(objs["RayCluster"]):
        assert resource in container(template)["resources"]["limits"]
        assert template["spec"]["nodeSelector"] == {**selector, "pool": "serving"}
        assert template["spec"]["tolerations"] == [
            {"key": taint, "operator": "Exists", "effect": "NoSchedule"},
            {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}]


def test_the_model_volume_is_mounted_read_only_and_vllm_reads_its_hugging_face_cache_offline():
    _, objs = rendered(load("b200-8x-bf16"), "kuberay", modelVolume={"hostPath": "/data/hf", "mountPath": "/hf"})
    head = objs["RayCluster"]["spec"]["headGroupSpec"]["template"]
    assert {"name": "model", "hostPath": {"path": "/data/hf", "type": "Directory"}} in head["spec"]["volumes"]
    assert {"name": "model", "mountPath": "/hf", "readOnly": True} in container(head)["volumeMounts"]
    assert env(head)["HF_HUB_CACHE"] == "/hf" and env(head)["HF_HUB_OFFLINE"] == "1"


def test_a_model_path_must_lie_inside_the_model_volume():
    topology = load("b200-8x-bf16")
    outside = topology.model_copy(update={"model": topology.model.model_copy(update={"path": "/data/ultra"})})
    with pytest.raises(RenderError, match="outside modelVolume.mountPath"):
        rendered(outside)
    inside = topology.model_copy(update={"model": topology.model.model_copy(update={"path": "/models/ultra"})})
    _, objs = rendered(inside, "leaderworkerset")
    assert "exec vllm serve /models/ultra " in container(objs["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
                                                         ["leaderTemplate"])["args"][0]


def test_kuberay_head_waits_for_every_gpu_then_runs_the_vllm_backends_command():
    topology = load("h100-16x-bf16")
    dep, objs = rendered(topology, "kuberay")
    cluster = objs["RayCluster"]
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    head_script = container(cluster["spec"]["headGroupSpec"]["template"])["args"][0].splitlines()
    assert head_script[1] == "${KUBERAY_GEN_RAY_START_CMD} &"
    assert "< 16)" in head_script[2]  # the plan's world size, every worker's GPUs
    assert shlex.split(head_script[3]) == ["exec", *serve_argv(topology, dep.plan, launcher="ray")]
    assert "--distributed-executor-backend" in head_script[3]
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (1, 1, 1)
    assert group["rayStartParams"] == {"object-store-memory": str(8 * GiB), "num-gpus": "8"}
    assert container(group["template"])["args"] == ["ulimit -n 65536\nexec ${KUBERAY_GEN_RAY_START_CMD}"]


def test_kuberay_makes_one_worker_group_per_run_of_alike_nodes():
    text = RDMA_TOPOLOGY.replace("name: roce", "name: mixed").replace(
        "interconnect:", "  - {name: c, address: 10.0.0.3, accelerators: {kind: h200, count: 8}}\ninterconnect:")
    _, objs = rendered(loads(text), "kuberay")
    groups = objs["RayCluster"]["spec"]["workerGroupSpecs"]
    assert [(g["groupName"], g["replicas"]) for g in groups] == [("workers-0", 1), ("workers-1", 1)]
    with pytest.raises(RenderError, match="worker nodes differ"):
        rendered(loads(text), "leaderworkerset")


def test_leaderworkerset_runs_each_rank_of_vllms_ray_free_launch():
    topology = load("spark-4x")
    dep, objs = rendered(topology, "leaderworkerset")
    lws = objs["LeaderWorkerSet"]["spec"]
    assert lws["startupPolicy"] == "LeaderReady" and lws["replicas"] == 1
    group = lws["leaderWorkerTemplate"]
    assert group["size"] == 4 and group["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader = container(group["leaderTemplate"])
    head = "$(LWS_LEADER_ADDRESS)"
    assert shlex.split(leader["args"][0]) == ["exec", *serve_argv(topology, dep.plan, head_address=head,
                                                                   launcher="mp")]
    branches = {}
    for line in container(group["workerTemplate"])["args"][0].splitlines()[1:-2]:
        rank, command = line.strip().split(") ", 1)
        branches[int(rank)] = shlex.split(command.removesuffix(" ;;"))
    assert branches == {rank: ["exec", *serve_argv(topology, dep.plan, node_rank=rank, head_address=head,
                                                   launcher="mp")] for rank in (1, 2, 3)}
    port = int(leader["args"][0].split("--master-port ")[1].split()[0]) if "--master-port" in leader["args"][0] \
        else int(leader["args"][0].split("--data-parallel-rpc-port ")[1].split()[0])
    assert leader["readinessProbe"]["tcpSocket"] == {"port": port}  # ready to be dialled, not yet serving


def test_a_single_node_leaderworkerset_is_ready_when_the_engine_answers():
    _, objs = rendered(load("b200-8x-bf16"), "leaderworkerset")
    group = objs["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 1
    assert container(group["leaderTemplate"])["readinessProbe"]["httpGet"] == {"path": "/health", "port": 8000}


def test_the_runtime_follows_the_topologys_launcher_unless_given():
    topology = load("b200-8x-bf16")
    mp = topology.model_copy(update={"engine": topology.engine.model_copy(update={"launcher": "mp"})})
    assert "LeaderWorkerSet" in rendered(mp, None)[1]
    assert "RayCluster" in rendered(topology, None)[1]
    assert "RayCluster" in rendered(mp, "kuberay")[1]


def test_the_embedded_engine_runs_on_one_node_with_the_plans_cache_sizes():
    text = """
name: tiny
nodes: [{name: gpu0, address: 127.0.0.1, accelerators: {kind: h100-sxm, count: 1}}]
model: {id: nemotron-h-tiny, path: /models/nemotron-h-tiny, precision: bf16}
engine: {kind: embedded}
serving: {max_context: 4096, concurrency: 8}
"""
    dep, objs = rendered(loads(text), "leaderworkerset", image="registry.local/nemodeploy:0.1.0")
    validate(objs["LeaderWorkerSet"])
    argv = shlex.split(container(objs["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]["leaderTemplate"])["args"][0])
    flags = dict(zip(argv[3::2], argv[4::2]))
    cache = dep.plan.cache
    assert argv[:3] == ["exec", "nemodeploy", "serve"]
    assert flags["--model"] == "/models/nemotron-h-tiny" and flags["--device"] == "cuda"
    assert (int(flags["--num-kv-blocks"]), int(flags["--max-num-seqs"]), int(flags["--max-model-len"])) == \
        (cache.num_kv_blocks, cache.max_num_seqs, cache.max_model_len)
    two = text.replace("name: tiny\n", "name: tiny2\n").replace("count: 1}}]", "count: 1}, count: 2}]")
    with pytest.raises(RenderError, match="embedded engine spans nodes only"):
        rendered(loads(two), "kuberay", image="registry.local/nemodeploy:0.1.0")


def test_the_schema_check_is_strict_enough_to_fail():
    """The validator is what every test here leans on: it must reject what an API server would..."""
    import jsonschema
    import kubernetes_validate

    _, objs = rendered(load("h100-16x-bf16"), "kuberay")
    cluster = objs["RayCluster"]
    broken = {**cluster, "spec": {**cluster["spec"], "workerGroupSpecs": [
        {k: v for k, v in cluster["spec"]["workerGroupSpecs"][0].items() if k != "maxReplicas"}]}}
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        validate(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate({**cluster, "spec": {**cluster["spec"], "headGroupSpecs": {}}})  # a typo: unknown field
    template = cluster["spec"]["headGroupSpec"]["template"]
    bad_pod = {**template, "spec": {**template["spec"], "hostNetwrok": True}}
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError), match="hostNetwrok"):
        validate({**cluster, "spec": {**cluster["spec"], "headGroupSpec": {"template": bad_pod}}})
    _, objs = rendered(load("h100-16x-bf16"), "leaderworkerset")
    lws = objs["LeaderWorkerSet"]
    with pytest.raises(jsonschema.ValidationError):
        validate({**lws, "spec": {**lws["spec"], "startupPolicy": "WhenReady"}})
    with pytest.raises(kubernetes_validate.ValidationError):
        validate({**objs["Service"], "spec": {**objs["Service"]["spec"], "type": 3}})


@pytest.mark.parametrize("sample", sorted(p.name for p in (UPSTREAM / "samples").glob("*.yaml")))
def test_the_schema_check_accepts_the_projects_own_examples(sample):
    """... and is not stricter than the projects themselves (their samples, copied from the same tags)."""
    docs = [d for d in yaml.safe_load_all((UPSTREAM / "samples" / sample).read_text()) if d]
    assert any(d["kind"] in ("RayCluster", "LeaderWorkerSet") for d in docs)
    for doc in docs:
        validate(doc)
