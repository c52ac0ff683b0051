"""What the checks judge against: the topology, its plan, the thresholds, and what each node reported."""

from __future__ import annotations

from dataclasses import dataclass, field

from nemodeploy.topology.schema import NIC, Node, Topology

GiB = 2**30
RAY_GCS_PORT = 6379  # Ray's default --port, the one `up` starts the head with (RaySettings.port)
RAY_MIN_WORKER_PORT = 10002  # Ray's default --min-worker-port: every node's workers listen from here


@dataclass(frozen=True)
class Thresholds:
    """Limits a check compares against; each is documented in docs/preflight.md with its reason."""

    shm_bytes_per_accelerator: int = 1 * GiB
    nofile: int = 65536
    stack_bytes: int = 8 * 2**20
    latency_ms: float = 5.0
    tcp_gbps: float = 1.0
    clock_skew_s: float = 0.5
    read_gb_s: float = 0.5


@dataclass(frozen=True)
class PortSpec:
    name: str
    port: int  # 0: one the OS picks (an ephemeral port, as NCCL's bootstrap and socket transport use)
    head_only: bool


@dataclass
class Context:
    topology: Topology
    plan: object | None  # nemodeploy.plan.types.Plan; None when the topology cannot be planned
    thresholds: Thresholds = field(default_factory=Thresholds)
    facts: dict[str, dict] = field(default_factory=dict)  # node name -> the probe's `facts`
    net: dict[str, dict] = field(default_factory=dict)  # node name -> the probe's `net`
    network_only: bool = False  # `up`'s check: a busy port may be its own running cluster's (its Ray check names holders)

    @property
    def nodes(self) -> list[Node]:
        return list(self.topology.nodes)

    @property
    def head(self) -> Node:
        return self.topology.nodes[0]

    def packages(self) -> list[str]:
        """Python distributions every node needs for this topology's engine (torch too under vLLM: its wheels
        are built against one torch, and ranks on two torch builds fail in NCCL or at import)."""
        engine = ["vllm", "torch"] if self.topology.engine.kind == "vllm" else ["torch", "transformers", "safetensors"]
        return ["nemodeploy", "ray", *engine] if len(self.topology.nodes) > 1 else ["nemodeploy", *engine]

    def checkpoint_dir(self) -> str:
        """Where the node keeps (or will download) this model, as a path for the node's own shell (`~` is its home)."""
        model = self.topology.model
        if model.path:
            return model.path
        if "/" in model.id:  # a Hugging Face id: the hub cache's layout
            return "~/.cache/huggingface/hub/models--" + model.id.replace("/", "--")
        return f"~/.cache/nemodeploy/models/{model.id}"  # a built-in spec that nemodeploy writes (engine.tiny)

    def ports(self) -> list[PortSpec]:
        out = [PortSpec("engine", self.topology.engine.port, head_only=True), PortSpec("ephemeral", 0, head_only=False)]
        if len(self.topology.nodes) > 1:
            out += [PortSpec("ray-gcs", RAY_GCS_PORT, head_only=True), PortSpec("ray-worker", RAY_MIN_WORKER_PORT, head_only=False)]
        return out

    def address(self, node: Node) -> str:
        """The address the node really uses towards the head (its route's source); the topology's until measured."""
        route = (self.facts.get(node.name) or {}).get("route") or {}
        return route.get("src") or node.address

    def socket_nic(self, node: Node) -> NIC | None:
        """The topology's NIC for the interface the node really routes to the head on, else its first."""
        route = (self.facts.get(node.name) or {}).get("route") or {}
        return next((n for n in node.nics if n.name == route.get("dev")), node.nics[0] if node.nics else None)
