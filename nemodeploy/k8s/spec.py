"""The NemoDeployment custom resource: its spec (a topology plus how to run it on Kubernetes) and its status.

`spec.topology` is a topology file as it is, checked by the same pydantic schema as
`nemodeploy plan` (so a topology YAML pastes in unchanged; its node addresses and SSH
settings are not used on Kubernetes, where pods get their own addresses). The other spec
fields say what only Kubernetes needs: the runtime, the image, the model volume, the
network. Kubernetes-side fields are camelCase, as Kubernetes spells them; the CRD schema
in k8s/crd.yaml is generated from these models (nemodeploy/k8s/crd.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from nemodeploy.topology.schema import Topology

GROUP = "nemodeploy.io"
VERSION = "v1alpha1"
KIND = "NemoDeployment"
PLURAL = "nemodeployments"
API_VERSION = f"{GROUP}/{VERSION}"

Runtime = Literal["kuberay", "leaderworkerset"]
CONDITION_TYPES = ("Planned", "ClusterReady", "Serving", "Degraded")


class K8sModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class ModelVolume(K8sModel):
    """Where the checkpoint is: mounted read-only into every pod at `mountPath`."""

    persistent_volume_claim: str | None = Field(None, description="Name of a PersistentVolumeClaim holding the model")
    host_path: str | None = Field(None, description="A directory on every node holding the model")
    mount_path: str = Field("/models", pattern=r"^/", description="Where the volume appears in the pods")

    @model_validator(mode="after")
    def one_source(self) -> "ModelVolume":
        if (self.persistent_volume_claim is None) == (self.host_path is None):
            raise ValueError("give exactly one of persistentVolumeClaim or hostPath")
        return self


class Network(K8sModel):
    host_network: bool | None = Field(
        None,
        description="Pods on the nodes' own network (RDMA NICs by their topology names). "
        "Default: on when the topology lists RDMA NICs and no secondaryNetwork is given",
    )
    secondary_network: str | None = Field(
        None,
        description="Multus NetworkAttachmentDefinition ([namespace/]name) that attaches the RDMA NIC to each pod "
        "under the topology's NIC name; bootstrap traffic then stays on the pod network (eth0)",
    )
    rdma_resource: str = Field(
        "rdma/rdma_shared_device_a",
        description="Extended resource that grants the RDMA devices (NVIDIA network operator's default name); "
        "requested by pods on nodes with RDMA NICs, empty to request none",
    )

    @model_validator(mode="after")
    def one_way(self) -> "Network":
        if self.host_network and self.secondary_network:
            raise ValueError("hostNetwork and secondaryNetwork exclude each other; give one")
        return self


class Toleration(K8sModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class DeploymentSpec(K8sModel):
    topology: Topology
    runtime: Runtime | None = Field(
        None,
        description="kuberay: a KubeRay RayCluster, vLLM over Ray; leaderworkerset: a LeaderWorkerSet, "
        "vLLM's Ray-free multi-node launch. Default: the one topology.engine.launcher names (ray or mp)",
    )
    image: str | None = Field(None, description="Serving image; default vllm/vllm-openai at the supported version "
                                                "for engine.kind vllm (the embedded engine needs one given)")
    model_volume: ModelVolume
    network: Network = Network()
    node_selector: dict[str, str] = Field(default_factory=dict,
                                          description="Added to (and overriding) the accelerator kind's selector")
    tolerations: list[Toleration] = Field(default_factory=list,
                                          description="Added to the accelerator kind's tolerations")
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"

    @property
    def planned_topology(self) -> Topology:
        """The topology as planned and launched: the model named by its id alone. `model.path`
        is a directory inside the pods' volume, which neither the operator nor `render` can read;
        the launch commands load it in place of the id."""
        return self.topology.model_copy(update={"model": self.topology.model.model_copy(update={"path": None})})

    @property
    def workload_runtime(self) -> Runtime:
        if self.runtime is not None:
            return self.runtime
        return "leaderworkerset" if self.topology.engine.launcher == "mp" else "kuberay"


class Condition(K8sModel):
    """metav1.Condition's fields."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class PlanSummary(K8sModel):
    """What `nemodeploy plan` would print, in short; the whole plan is in the ConfigMap `<name>-plan`."""

    verdict: Literal["fits", "tight", "infeasible"]
    reason: str
    layout: str | None = Field(None, description="e.g. TP8 PP2 DP1 EP1 over 16 GPUs")
    nodes: int
    accelerator: str
    memory_per_gpu: dict[str, int] = Field(
        default_factory=dict, description="Bytes per GPU: capacity, usable, weights, kvCache, mambaState, free")
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    sequences_at_target_context: int | None = None
    context_at_target_concurrency: int | None = None


class DeploymentStatus(K8sModel):
    conditions: list[Condition] = Field(default_factory=list)
    plan: PlanSummary | None = None
    endpoint: str | None = Field(None, description="The OpenAI API base URL inside the cluster")
    workload: str | None = Field(None, description="Kind/name of the RayCluster or LeaderWorkerSet")
    pods_ready: int | None = Field(None, description="Pods of the workload that are Ready (head included)")
    pods_desired: int | None = None
    observed_generation: int | None = None
