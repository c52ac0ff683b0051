"""A NemoDeployment as the Kubernetes objects that serve it: plain functions over plain data.

`deployment` compiles the plan; `objects` turns it into the ConfigMap holding the plan
JSON, the Service in front of the head, and the RayCluster or LeaderWorkerSet. The
operator applies exactly these (with owner references added) and `nemodeploy render k8s`
writes them, so what a cluster gets can always be read beforehand.
"""

from __future__ import annotations

import json
import posixpath

from nemodeploy.k8s import kuberay, lws
from nemodeploy.k8s.pods import Deployment, RenderError
from nemodeploy.k8s.spec import DeploymentSpec, PlanSummary
from nemodeploy.plan.types import Plan

VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"  # the vLLM release the launch flags are written for
PLAN_KEY = "plan.json"
WORKLOADS = {"kuberay": kuberay.ray_cluster, "leaderworkerset": lws.leader_worker_set}


def compile_spec(spec: DeploymentSpec) -> Plan:
    """The plan of spec.planned_topology, as `nemodeploy plan` compiles it; PlanInputError on bad input."""
    from nemodeploy.plan.compiler import PlanInputError, compile_plan

    if spec.topology.model.id is None:
        raise PlanInputError(("model", "id"), "on Kubernetes the plan comes from model.id (a built-in spec or its "
                                              "Hugging Face id); model.path only says where the pods find it")
    return compile_plan(spec.planned_topology)


def deployment(name: str, namespace: str, spec: DeploymentSpec, plan: Plan) -> Deployment:
    """Check what the plan alone does not: the plan fits, an image, the model inside the volume."""
    if not plan.fits:
        raise RenderError(f"{spec.topology.name}: the plan does not fit: {plan.reason}")
    image = spec.image or (VLLM_IMAGE if spec.topology.engine.kind == "vllm" else None)
    if image is None:
        raise RenderError("image: the embedded engine has no published image; give one with nemodeploy installed")
    path = spec.topology.model.path
    mount = spec.model_volume.mount_path.rstrip("/") + "/"
    if path is not None and not posixpath.normpath(path).startswith(mount):
        raise RenderError(f"topology.model.path {path} is outside modelVolume.mountPath "
                          f"{spec.model_volume.mount_path}: "
                          "the pods see only the volume")
    return Deployment(name, namespace, spec, plan, image)


def endpoint(dep: Deployment) -> str:
    return f"http://{dep.name}.{dep.namespace}.svc:{dep.spec.topology.engine.port}/v1"


def plan_config_map(dep: Deployment) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": dep.metadata(f"{dep.name}-plan"),
        "data": {PLAN_KEY: json.dumps(dep.plan.model_dump(mode="json"))},
    }


def service(dep: Deployment) -> dict:
    port = dep.spec.topology.engine.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": dep.metadata(dep.name),
        "spec": {
            "type": dep.spec.service_type,
            "selector": dep.labels("head"),
            "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }


def workload(dep: Deployment) -> dict:
    return WORKLOADS[dep.spec.workload_runtime](dep)


def objects(dep: Deployment) -> list[dict]:
    """Everything one NemoDeployment owns, in the order to apply it."""
    return [plan_config_map(dep), service(dep), workload(dep)]


def summary(plan: Plan) -> PlanSummary:
    parallel, memory, capacity, cache = plan.parallel, plan.memory, plan.capacity, plan.cache
    layout = (f"TP{parallel.tp_size} PP{parallel.pp_size} DP{parallel.dp_size} EP{parallel.ep_size} "
              f"over {parallel.world_size} GPUs") if parallel else None
    per_gpu = {}
    if memory is not None:
        per_gpu = {"capacity": memory.capacity, "usable": memory.usable, "weights": memory.weights,
                   "kvCache": memory.kv_cache, "mambaState": memory.mamba_state, "free": memory.free}
    return PlanSummary(
        verdict=plan.verdict, reason=plan.reason, layout=layout, nodes=plan.node_count, accelerator=plan.accelerator,
        memory_per_gpu=per_gpu,
        max_num_seqs=cache.max_num_seqs if cache else None,
        max_model_len=cache.max_model_len if cache else None,
        sequences_at_target_context=capacity.sequences_at_target_context if capacity else None,
        context_at_target_concurrency=capacity.context_at_target_concurrency if capacity else None,
    )
