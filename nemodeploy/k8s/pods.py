"""One pod template per role (head, a worker group): devices, network, memory, volumes.

Plain functions over plain data; the RayCluster and LeaderWorkerSet builders wrap what
these return. The network rules, for a node of the topology:

- host network (default when the node lists RDMA NICs and no secondary network is named):
  the pod sees the node's NICs by their topology names, so preflight's environment
  (nemodeploy/topology/netenv.py) applies as is;
- otherwise socket traffic (bootstrap, Gloo, NCCL's socket transport) stays on the pod
  network, `eth0`, and RDMA NICs come from a Multus secondary network attached under the
  topology's NIC name, so NCCL_IB_HCA still names the right rails;
- VLLM_HOST_IP is always the pod's own IP (the topology's addresses are SSH's, not the pod's).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from nemodeploy.k8s.scheduling import scheduling
from nemodeploy.k8s.spec import DeploymentSpec
from nemodeploy.plan.types import Plan
from nemodeploy.preflight.context import Thresholds
from nemodeploy.topology.schema import Node, Topology

GiB = 2**30
POD_NETWORK_NIC = "eth0"
PLAN_DIR = "/etc/nemodeploy"
MULTUS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
_SOCKET_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")


INSTANCE_LABEL = "app.kubernetes.io/instance"
ROLE_LABEL = "nemodeploy.io/role"


class RenderError(ValueError):
    """The deployment cannot be expressed as Kubernetes objects; the message says what to change."""


@dataclass(frozen=True)
class Deployment:
    """One NemoDeployment being rendered: its name, its spec and the plan compiled from it."""

    name: str
    namespace: str
    spec: DeploymentSpec
    plan: Plan
    image: str

    @property
    def topology(self) -> Topology:
        return self.spec.planned_topology

    @property
    def model_path(self) -> str | None:
        """The checkpoint directory inside the pods, when the volume holds one rather than a Hugging Face cache."""
        return self.spec.topology.model.path

    def labels(self, role: str | None = None) -> dict[str, str]:
        labels = {"app.kubernetes.io/name": "nemodeploy", INSTANCE_LABEL: self.name,
                  "app.kubernetes.io/managed-by": "nemodeploy"}
        return {**labels, ROLE_LABEL: role} if role else labels

    def metadata(self, name: str, **extra) -> dict:
        return {"name": name, "namespace": self.namespace, "labels": self.labels(), **extra}


@dataclass(frozen=True)
class PodSpec:
    """What differs between the pods of one deployment."""

    container: str  # container name
    node: Node  # the topology node the pod stands for
    ranks: int  # GPUs of the plan on that node
    args: list[str]  # the container's `bash -c` script, one element
    env: dict[str, str]  # from the launch backends, before the Kubernetes adjustments below
    role: str  # head | worker
    readiness: dict | None = None  # a probe; None leaves it to the runtime (KubeRay injects its own)
    ray_object_store: bool = False  # /dev/shm also holds Ray's object store


def ranks_on(plan: Plan, node: Node) -> int:
    """The plan's GPUs on `node` (what its pod requests)."""
    return sum(1 for rank in plan.ranks if rank.node == node.name)


def node_shape(node: Node) -> tuple:
    """What a pod template depends on: nodes alike in this can share one."""
    return node.accelerators, tuple(node.nics)


def has_rdma(node: Node) -> bool:
    return any(nic.rdma for nic in node.nics)


def host_network(spec: DeploymentSpec, node: Node) -> bool:
    if spec.network.host_network is not None:
        return spec.network.host_network
    return has_rdma(node) and spec.network.secondary_network is None


def quantity(n_bytes: int) -> str:
    """Bytes as a Kubernetes quantity, rounded up to whole GiB."""
    return f"{max(1, math.ceil(n_bytes / GiB))}Gi"


def shm_bytes(ranks: int, ray_object_store: bool) -> int:
    """/dev/shm for `ranks` GPUs: preflight's per-GPU floor (NCCL's intra-node buffers, vLLM's
    shared-memory broadcast), and as much again when Ray's object store lives there too (the
    same amount is passed to `ray start --object-store-memory`)."""
    per_gpu = Thresholds().shm_bytes_per_accelerator
    base = max(ranks, 1) * per_gpu
    return 2 * base if ray_object_store else base


def container_env(spec: DeploymentSpec, pod: PodSpec) -> list[dict]:
    env = {k: v for k, v in pod.env.items() if k != "VLLM_HOST_IP"}
    if not host_network(spec, pod.node):
        env.update(dict.fromkeys(_SOCKET_VARS, POD_NETWORK_NIC))
    model = spec.topology.model
    if model.path is None:  # vLLM finds the id in a Hugging Face cache on the read-only volume
        env.update(HF_HUB_CACHE=spec.model_volume.mount_path, HF_HUB_OFFLINE="1")
    listed = [{"name": k, "value": v} for k, v in sorted(env.items())]
    return [*listed, {"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]


def _volumes(spec: DeploymentSpec, name: str, pod: PodSpec) -> tuple[list[dict], list[dict]]:
    volume = spec.model_volume
    source = ({"persistentVolumeClaim": {"claimName": volume.persistent_volume_claim, "readOnly": True}}
              if volume.persistent_volume_claim else {"hostPath": {"path": volume.host_path, "type": "Directory"}})
    volumes = [
        {"name": "dshm", "emptyDir": {"medium": "Memory",
                                      "sizeLimit": quantity(shm_bytes(pod.ranks, pod.ray_object_store))}},
        {"name": "model", **source},
        {"name": "plan", "configMap": {"name": f"{name}-plan"}},
    ]
    mounts = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "model", "mountPath": volume.mount_path, "readOnly": True},
        {"name": "plan", "mountPath": PLAN_DIR, "readOnly": True},
    ]
    return volumes, mounts


def _resources(spec: DeploymentSpec, pod: PodSpec) -> dict:
    sched = scheduling(pod.node.accelerators.kind)
    limits: dict[str, str] = {}
    if sched.resource:
        limits[sched.resource] = str(pod.ranks)
    if has_rdma(pod.node) and spec.network.rdma_resource:
        limits[spec.network.rdma_resource] = "1"
    return {"limits": limits} if limits else {}


def _network(spec: DeploymentSpec, pod: PodSpec) -> tuple[dict, dict]:
    """(pod spec fields, pod annotations) for the network rules in the module docstring."""
    if host_network(spec, pod.node):
        return {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}, {}
    if spec.network.secondary_network and has_rdma(pod.node):
        namespace, _, name = spec.network.secondary_network.rpartition("/")
        attachments = [{"name": name, **({"namespace": namespace} if namespace else {}), "interface": nic.name}
                       for nic in pod.node.nics if nic.rdma]
        return {}, {MULTUS_ANNOTATION: json.dumps(attachments)}
    return {}, {}


def pod_template(dep: Deployment, pod: PodSpec, ports: list[dict]) -> dict:
    spec = dep.spec
    sched = scheduling(pod.node.accelerators.kind)
    volumes, mounts = _volumes(spec, dep.name, pod)
    network, annotations = _network(spec, pod)
    container = {
        "name": pod.container,
        "image": dep.image,
        "command": ["/bin/bash", "-c"],
        "args": pod.args,
        "env": container_env(spec, pod),
        **({"ports": ports} if ports else {}),
        "resources": _resources(spec, pod),
        "volumeMounts": mounts,
    }
    if has_rdma(pod.node):  # registering RDMA memory needs memlock beyond the container default
        container["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]}}
    if pod.readiness:
        container["readinessProbe"] = pod.readiness
    tolerations = sched.tolerations + [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
    pod_spec = {
        **network,
        "containers": [container],
        "volumes": volumes,
        "nodeSelector": {**sched.node_selector, **spec.node_selector},
        "tolerations": tolerations,
    }
    metadata = {"labels": dep.labels(pod.role), **({"annotations": annotations} if annotations else {})}
    return {"metadata": metadata, "spec": {k: v for k, v in pod_spec.items() if v != {} and v != []}}
