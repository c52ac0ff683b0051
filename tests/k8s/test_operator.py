"""The operator's handlers end to end, through its narrow Api, against the in-memory STAND-IN
for the API server (k8s_apistore.InMemoryApi: no live API server can run here).

Each step calls the real kopf handler with a kopf.Patch, then applies that patch to the
stored NemoDeployment's status as kopf would; the workload controllers (KubeRay, LWS) and
the engine's /health are played by the test through the stand-in.
"""

from __future__ import annotations

import kopf
import pytest
import yaml

from nemodeploy.k8s import operator
from nemodeploy.k8s.spec import API_VERSION, KIND
from nemodeploy.topology.loader import resolve

NS = "serving"
GROUP_OBJECTS = {("ConfigMap", "ultra-plan"), ("Service", "ultra")}
HEAD_READY = {"type": "HeadPodReady", "status": "True", "reason": "HeadPodRunningAndReady", "message": "",
              "lastTransitionTime": "2026-01-01T00:00:00Z"}


def topology(profile: str) -> dict:
    return yaml.safe_load(resolve(profile).read_text())


def create(api, spec: dict, name: str = "ultra") -> None:
    api.create({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "namespace": NS}, "spec": spec})


def cr(api, name: str = "ultra") -> dict:
    return api.get(API_VERSION, KIND, NS, name)


def reconcile(api, name: str = "ultra") -> dict:
    """One run of the operator's handler; the status patch it made (applied to the stand-in)."""
    patch = kopf.Patch()
    operator.reconcile_deployment(body=kopf.Body(cr(api, name)), patch=patch, memo=kopf.Memo(api=api))
    status = dict(patch.get("status", {}))
    if status:
        api.patch_status(API_VERSION, KIND, NS, name, status)
    return status


def conditions(api, name: str = "ultra") -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in cr(api, name)["status"]["conditions"]}


def spec_for(profile: str, **extra) -> dict:
    return {"topology": topology(profile), "modelVolume": {"persistentVolumeClaim": "models"}, **extra}


def test_create_makes_the_owned_objects_and_reports_the_plan(api):
    create(api, spec_for("h100-16x-bf16", runtime="kuberay"))
    status = reconcile(api)
    assert api.kinds() == {(KIND, "ultra"), *GROUP_OBJECTS, ("RayCluster", "ultra")}
    owner = cr(api)["metadata"]["uid"]
    for kind, name in GROUP_OBJECTS | {("RayCluster", "ultra")}:
        version = "ray.io/v1" if kind == "RayCluster" else "v1"
        (ref,) = api.get(version, kind, NS, name)["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["kind"], ref["controller"]) == (owner, KIND, True)
    assert status["plan"]["verdict"] == "fits" and status["plan"]["layout"].endswith("over 16 GPUs")
    assert status["plan"]["memoryPerGpu"]["weights"] > 0
    assert status["endpoint"] == "http://ultra.serving.svc:8000/v1"
    assert conditions(api) == {"Planned": ("True", "Planned"), "ClusterReady": ("False", "Waiting"),
                               "Serving": ("False", "NotServing"), "Degraded": ("False", "AsPlanned")}
    assert [(e[1], e[2]) for e in api.events] == [("Normal", "Created")] * 3


def test_a_second_reconcile_changes_nothing(api):
    create(api, spec_for("spark-4x", runtime="leaderworkerset"))
    reconcile(api)
    writes, events, before = len(api.writes), len(api.events), cr(api)
    assert reconcile(api) == {}
    assert len(api.writes) == writes and len(api.events) == events
    assert cr(api) == before


def test_readiness_waits_for_every_worker_then_for_the_engine(api):
    create(api, spec_for("h100-16x-bf16", runtime="kuberay"))
    reconcile(api)
    api.set_status("ray.io/v1", "RayCluster", NS, "ultra", {"readyWorkerReplicas": 0, "conditions": [HEAD_READY]})
    reconcile(api)
    assert conditions(api)["ClusterReady"] == ("False", "Waiting")
    assert cr(api)["status"]["podsReady"] == 1 and cr(api)["status"]["podsDesired"] == 2
    api.set_status("ray.io/v1", "RayCluster", NS, "ultra", {"readyWorkerReplicas": 1})
    reconcile(api)
    assert conditions(api)["ClusterReady"] == ("False", "Waiting"), "the head is not ready now"
    api.set_status("ray.io/v1", "RayCluster", NS, "ultra", {"readyWorkerReplicas": 1, "conditions": [HEAD_READY]})
    reconcile(api)
    assert conditions(api)["ClusterReady"] == ("True", "AllPodsReady")
    assert conditions(api)["Serving"] == ("False", "NotServing")
    api.serving.add("http://ultra.serving.svc:8000/health")
    reconcile(api)
    assert conditions(api)["Serving"] == ("True", "Healthy")
    since = {c["type"]: c["lastTransitionTime"] for c in cr(api)["status"]["conditions"]}

    api.set_status("ray.io/v1", "RayCluster", NS, "ultra", {"readyWorkerReplicas": 0, "conditions": [HEAD_READY]})
    # a worker died
    reconcile(api)
    assert conditions(api)["Degraded"] == ("True", "Lost")
    assert conditions(api)["ClusterReady"] == ("False", "Waiting") and conditions(api)["Serving"][0] == "False"
    reconcile(api)
    assert conditions(api)["Degraded"] == ("True", "Lost"), "stays degraded until it is back"
    api.set_status("ray.io/v1", "RayCluster", NS, "ultra", {"readyWorkerReplicas": 1, "conditions": [HEAD_READY]})
    reconcile(api)
    assert conditions(api)["Degraded"] == ("False", "AsPlanned")
    planned = next(c for c in cr(api)["status"]["conditions"] if c["type"] == "Planned")
    assert planned["lastTransitionTime"] == since["Planned"], "an unchanged condition keeps its transition time"


def test_leaderworkerset_readiness_counts_whole_groups(api):
    create(api, spec_for("spark-4x", runtime="leaderworkerset"))
    reconcile(api)
    lws = ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", NS, "ultra")
    api.set_status(*lws, {"readyReplicas": 0, "replicas": 1})
    reconcile(api)
    assert cr(api)["status"]["podsDesired"] == 4 and conditions(api)["ClusterReady"][0] == "False"
    api.set_status(*lws, {"readyReplicas": 1, "replicas": 1})
    reconcile(api)
    assert conditions(api)["ClusterReady"] == ("True", "AllPodsReady")


def test_scaling_out_updates_the_workload_in_place(api):
    spec = spec_for("h200-8x-bf16", runtime="kuberay")
    create(api, spec)
    reconcile(api)
    assert api.get("ray.io/v1", "RayCluster", NS, "ultra")["spec"]["workerGroupSpecs"] == []
    api.edit_spec(API_VERSION, KIND, NS, "ultra", lambda s: s["topology"]["nodes"][0].update(count=2))
    reconcile(api)
    cluster = api.get("ray.io/v1", "RayCluster", NS, "ultra")
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 1
    assert ("replace", "RayCluster", "ultra") in api.writes and ("replace", "ConfigMap", "ultra-plan") in api.writes
    assert ("replace", "Service", "ultra") not in api.writes, "only what changed is written"
    assert "over 16 GPUs" in cr(api)["status"]["plan"]["layout"]
    assert ("ultra", "Normal", "Updated", "updated RayCluster ultra") in api.events


def test_changing_the_model_changes_the_launch_command(api):
    create(api, spec_for("b200-8x-bf16", runtime="leaderworkerset"))
    reconcile(api)
    lws = ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", NS, "ultra")

    def command() -> str:
        template = api.get(*lws)["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
        return template["spec"]["containers"][0]["args"][0]

    assert "NVIDIA-Nemotron-3-Ultra-550B-A55B-BF16" in command()
    api.edit_spec(API_VERSION, KIND, NS, "ultra", lambda s: s["topology"]["model"].update(
        id="nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-NVFP4", precision="nvfp4"))
    reconcile(api)
    assert "NVIDIA-Nemotron-3-Ultra-550B-A55B-NVFP4" in command()
    assert cr(api)["status"]["observedGeneration"] == 2


def test_deleting_the_nemodeployment_garbage_collects_what_it_owns(api):
    create(api, spec_for("h100-16x-bf16", runtime="kuberay"))
    create(api, spec_for("b200-8x-bf16", runtime="kuberay"), name="other")
    reconcile(api)
    reconcile(api, "other")
    api.delete(API_VERSION, KIND, NS, "ultra")
    assert api.kinds() == {(KIND, "other"), ("ConfigMap", "other-plan"), ("Service", "other"), ("RayCluster", "other")}


@pytest.mark.parametrize("edit, reason, fragment", [
    (lambda s: s["topology"]["nodes"][0]["accelerators"].update(kind="tpu-v5"), "InvalidSpec",
     "spec.topology.nodes.0.accelerators.kind: Value error, unknown accelerator 'tpu-v5'"),
    (lambda s: s["topology"]["engine"].update(parallel={"tp_size": 3}), "InvalidSpec", "spec.topology.engine"),
    (lambda s: s["modelVolume"].update(hostPath="/data"), "InvalidSpec", "exactly one of"),
    (lambda s: s["topology"]["model"].update(path="/elsewhere/ultra"), "CannotRender", "outside modelVolume"),
])
def test_an_invalid_spec_is_a_condition_and_one_event_not_a_crash(api, edit, reason, fragment):
    spec = spec_for("h100-16x-bf16", runtime="kuberay")
    edit(spec)
    create(api, spec)
    reconcile(api)
    assert conditions(api)["Planned"] == ("False", reason)
    message = next(c["message"] for c in cr(api)["status"]["conditions"] if c["type"] == "Planned")
    assert fragment in message and "\n" not in message
    assert api.kinds() == {(KIND, "ultra")}
    assert api.events == [("ultra", "Warning", reason, message)]
    assert reconcile(api) == {} and len(api.events) == 1, "the same problem is not announced twice"


def test_a_plan_that_does_not_fit_leaves_a_running_deployment_alone(api):
    create(api, spec_for("h200-8x-bf16", runtime="kuberay"))
    reconcile(api)
    owned = {key: obj for key, obj in api.objects.items() if key[1] != KIND}
    api.edit_spec(API_VERSION, KIND, NS, "ultra",  # 8x 141 GB -> 8x 80 GB: 1.1 TB of weights no longer fit
                  lambda s: s["topology"]["nodes"][0]["accelerators"].update(kind="h100-sxm"))
    reconcile(api)
    assert conditions(api)["Planned"] == ("False", "DoesNotFit")
    assert cr(api)["status"]["plan"]["verdict"] == "infeasible"
    assert {key: obj for key, obj in api.objects.items() if key[1] != KIND} == owned
    assert api.events[-1][1:3] == ("Warning", "DoesNotFit") and "do not fit" in api.events[-1][3]


def test_one_handler_serves_create_update_resume_and_the_timer():
    registry = kopf.get_default_registry()
    resource = kopf.Resource("nemodeploy.io", "v1alpha1", "nemodeployments", kind=KIND, namespaced=True,
                             verbs=["list", "watch", "patch"])
    changing = [h for h in registry._changing.get_all_handlers() if h.fn is operator.reconcile_deployment]
    assert {(h.reason, h.initial, h.field) for h in changing} == {
        ("create", None, None), ("update", None, ("spec",)), (None, True, None)}  # initial: kopf's resume
    (timer,) = [h for h in registry._spawning.get_all_handlers() if h.fn is operator.reconcile_deployment]
    assert timer.interval == operator.INTERVAL_S
    assert all(h.selector.check(resource) for h in [*changing, timer])
