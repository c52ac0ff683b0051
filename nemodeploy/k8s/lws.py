"""The plan as a LeaderWorkerSet (leaderworkerset.x-k8s.io/v1, LWS 0.10): vLLM without Ray.

One group of `size` pods = the plan's nodes: the leader is node rank 0, worker `i` is
node rank `i` (LWS_WORKER_INDEX), each running `vllm serve` with vLLM's multi-node launcher
(launch.py). `RecreateGroupOnPodRestart`: a rank that dies takes the whole group down, since
a collective group cannot take a rank back. `startupPolicy: LeaderReady`: workers are created
once the leader is Ready, so the leader's readiness is that it listens on the rendezvous port
the workers dial (its API only answers after they joined; the operator's Serving condition
watches that). Workers share one template, so worker nodes must be alike.
"""

from __future__ import annotations

from nemodeploy.backends.vllm import launch_nodes
from nemodeploy.k8s import launch
from nemodeploy.k8s.pods import Deployment, PodSpec, RenderError, node_shape, pod_template, ranks_on

API_VERSION = "leaderworkerset.x-k8s.io/v1"
KIND = "LeaderWorkerSet"


def _readiness(port: int, path: str | None = None) -> dict:
    check = {"httpGet": {"path": path, "port": port}} if path else {"tcpSocket": {"port": port}}
    return {**check, "periodSeconds": 10}


def leader_worker_set(dep: Deployment) -> dict:
    topology, plan = dep.topology, dep.plan
    nodes = launch_nodes(topology, plan)
    leader, workers = nodes[0], nodes[1:]
    port = topology.engine.port
    leader_argv = launch.server_argv(topology, plan, node_rank=0, launcher="mp", model_path=dep.model_path)
    rendezvous = launch.rendezvous_port(leader_argv)
    readiness = _readiness(rendezvous) if workers and rendezvous else _readiness(port, "/health")
    leader_pod = PodSpec("vllm-leader" if topology.engine.kind == "vllm" else "engine", leader,
                         ranks_on(plan, leader), [launch.plain_script(leader_argv)],
                         launch.node_environment(topology, plan, 0), "head", readiness=readiness)
    ports = [{"name": "http", "containerPort": port}]
    if workers:
        if len({node_shape(w) for w in workers}) > 1:
            raise RenderError(f"{topology.name}: LeaderWorkerSet workers share one pod template; the worker nodes "
                              "differ in accelerators or NICs (use runtime: kuberay)")
        argvs = {rank: launch.server_argv(topology, plan, node_rank=rank, launcher="mp", model_path=dep.model_path)
                 for rank in range(1, len(nodes))}
        worker_pod = PodSpec("vllm-worker", workers[0], ranks_on(plan, workers[0]),
                             [launch.lws_worker_script(argvs)], launch.node_environment(topology, plan, 1), "worker")
        worker_template = pod_template(dep, worker_pod, [])
    else:
        worker_template = pod_template(dep, leader_pod, ports)
    group = {
        "size": len(nodes),
        "restartPolicy": "RecreateGroupOnPodRestart",
        "leaderTemplate": pod_template(dep, leader_pod, ports),
        "workerTemplate": worker_template,
    }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": dep.metadata(dep.name),
        "spec": {"replicas": 1, "startupPolicy": "LeaderReady", "leaderWorkerTemplate": group},
    }


def pods_ready(obj: dict) -> tuple[int, int]:
    """(ready, desired) pods: LWS counts ready groups, a group being ready when all its pods are."""
    status = obj.get("status") or {}
    spec = obj["spec"]
    size = spec["leaderWorkerTemplate"].get("size", 1)
    return status.get("readyReplicas", 0) * size, spec.get("replicas", 1) * size
