"""The plan as a KubeRay RayCluster (ray.io/v1, KubeRay 1.7): vLLM over Ray.

One pod per node of the plan: the head is node rank 0 (it holds GPUs too and runs `vllm
serve` once every worker joined, see launch.py); the other nodes become worker groups, one
per run of identical nodes, with a fixed size (min = max = replicas: the plan is for
exactly these GPUs, so autoscaling is off). `ray start` gets the GPU count and an object
store that fits the /dev/shm emptyDir (pods.shm_bytes).
"""

from __future__ import annotations

from itertools import groupby

from nemodeploy.backends.vllm import launch_nodes
from nemodeploy.k8s import launch
from nemodeploy.k8s.pods import Deployment, PodSpec, node_shape, pod_template, ranks_on, shm_bytes
from nemodeploy.topology.schema import Node

API_VERSION = "ray.io/v1"
KIND = "RayCluster"
OVERWRITE_CMD = "ray.io/overwrite-container-cmd"
DASHBOARD_PORT = 8265
GCS_PORT = 6379


def _start_params(dep: Deployment, node: Node, **extra: str) -> dict[str, str]:
    ranks = ranks_on(dep.plan, node)
    params = {"object-store-memory": str(shm_bytes(ranks, ray_object_store=False)), **extra}
    return {**params, "num-gpus": str(ranks)} if node.accelerators.kind != "cpu" else params


def ray_cluster(dep: Deployment) -> dict:
    topology, plan = dep.topology, dep.plan
    nodes = launch_nodes(topology, plan)
    head, workers = nodes[0], nodes[1:]
    argv = launch.server_argv(topology, plan, node_rank=0, launcher="ray", model_path=dep.model_path)
    env = launch.node_environment(topology, plan, 0)
    gpus = 0 if head.accelerators.kind == "cpu" else plan.parallel.world_size
    head_pod = PodSpec("ray-head", head, ranks_on(dep.plan, head), [launch.ray_head_script(argv, gpus)], env, "head",
                       ray_object_store=True)
    ports = [{"name": "gcs", "containerPort": GCS_PORT}, {"name": "dashboard", "containerPort": DASHBOARD_PORT},
             {"name": "http", "containerPort": topology.engine.port}]
    groups = []
    runs = [list(run) for _, run in groupby(workers, key=node_shape)]
    for index, run in enumerate(runs):
        node = run[0]
        env = launch.node_environment(topology, plan, nodes.index(node))
        worker = PodSpec("ray-worker", node, ranks_on(dep.plan, node), [launch.ray_worker_script()], env, "worker",
                         ray_object_store=True)
        groups.append({
            "groupName": "workers" if len(runs) == 1 else f"workers-{index}",
            "replicas": len(run), "minReplicas": len(run), "maxReplicas": len(run),
            "rayStartParams": _start_params(dep, node),
            "template": pod_template(dep, worker, []),
        })
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": dep.metadata(dep.name, annotations={OVERWRITE_CMD: "true"}),
        "spec": {
            "headGroupSpec": {
                "rayStartParams": _start_params(dep, head, **{"dashboard-host": "0.0.0.0"}),
                "template": pod_template(dep, head_pod, ports),
            },
            "workerGroupSpecs": groups,
        },
    }


def pods_ready(obj: dict) -> tuple[int, int]:
    """(ready, desired) pods, the head's included, from a RayCluster's status (KubeRay 1.7 fields:
    `readyWorkerReplicas`, and the head's `HeadPodReady` condition)."""
    status = obj.get("status") or {}
    desired = sum(group.get("replicas", 0) for group in obj["spec"].get("workerGroupSpecs", []))
    head = any(c.get("type") == "HeadPodReady" and c.get("status") == "True" for c in status.get("conditions", []))
    return status.get("readyWorkerReplicas", 0) + head, desired + 1
