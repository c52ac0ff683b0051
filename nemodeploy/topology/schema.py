"""The topology file: which machines, which model, which engine, what to serve.

Every field forbids unknown keys so that a typo is an error with a location,
not a silently ignored setting. Types are strict: a string, boolean or float is never
coerced into a count or a port. Names and addresses are checked for what they become
(nemodeploy.topology.names).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nemodeploy.topology.names import Address, DnsLabel, ExtraArgs, FreeText, InterfaceName, ModelId, PathText, UserName

Precision = Literal["bf16", "fp8", "nvfp4", "fp32"]
KvCacheDtype = Literal["auto", "bf16", "fp8", "fp32"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SSH(Strict):
    user: UserName = "root"
    port: int = Field(22, ge=1, le=65535)
    key: PathText | None = Field(None, description="Path of the private key; the SSH agent and ~/.ssh defaults otherwise")


class Accelerators(Strict):
    kind: str = Field(description="A hardware catalog kind: gb200, b200, h100-sxm, h200, gb10, mi300x, cpu, ...")
    count: int = Field(1, ge=1, le=72)

    @field_validator("kind")
    @classmethod
    def known_kind(cls, kind: str) -> str:
        from nemodeploy.topology.catalog import ACCELERATORS

        key = kind.lower()
        if key not in ACCELERATORS:
            raise ValueError(f"unknown accelerator {kind!r}; known: {', '.join(sorted(ACCELERATORS))}")
        return key


class NIC(Strict):
    name: InterfaceName
    mtu: int = Field(1500, ge=576, le=9216)
    speed_gbps: float = Field(100, gt=0)
    rdma: bool = False
    hca: InterfaceName | None = Field(None, description="RDMA device behind this NIC (e.g. mlx5_0), for NCCL_IB_HCA")


class Node(Strict):
    name: DnsLabel
    address: Address = Field(description="IP address or host name that the head and SSH reach this node on")
    ssh: SSH = SSH()
    accelerators: Accelerators
    nics: list[NIC] = []
    count: int = Field(
        1,
        ge=1,
        le=1024,
        description="Identical nodes described once (planning only; nodes to bring up are listed one by one)",
    )


class Interconnect(Strict):
    inter_node: str | None = Field(None, description="A catalog network kind between nodes: roce-200g, ib-ndr-400g, ...")

    @field_validator("inter_node")
    @classmethod
    def known_network(cls, kind: str | None) -> str | None:
        from nemodeploy.topology.catalog import NETWORKS

        if kind is None:
            return None
        key = kind.lower()
        if key not in NETWORKS:
            raise ValueError(f"unknown network {kind!r}; known: {', '.join(sorted(NETWORKS))}")
        return key


class ModelRef(Strict):
    id: ModelId | None = Field(None, description="Hugging Face id, or the name of a built-in spec")
    path: PathText | None = Field(None, description="Local HF-format directory with config.json")
    precision: Precision = "bf16"

    @model_validator(mode="after")
    def one_source(self) -> "ModelRef":
        if not self.id and not self.path:
            raise ValueError("give the model's id or path")
        return self


class ParallelOverrides(Strict):
    tp_size: int | None = Field(None, ge=1)
    ep_size: int | None = Field(None, ge=1)
    pp_size: int | None = Field(None, ge=1)
    dp_size: int | None = Field(None, ge=1)


class Engine(Strict):
    kind: Literal["embedded", "vllm"] = "embedded"
    parallel: ParallelOverrides = ParallelOverrides()
    memory_utilization: float | None = Field(
        None, gt=0.1, le=0.99,
        description="Share of device memory the engine may use; default per accelerator (0.90, DGX Spark 0.85)")
    port: int = Field(8000, ge=1, le=65535)
    launcher: Literal["ray", "mp"] = Field(
        "ray", description="vllm across nodes: on the Ray cluster (ray) or one vllm serve per node without Ray (mp)")
    extra_args: ExtraArgs = Field(default_factory=dict, description="Passed through to the engine unchanged")


class Serving(Strict):
    max_context: int = Field(131072, ge=16, le=1_048_576)
    concurrency: int = Field(16, ge=1, le=65536)
    kv_cache_dtype: KvCacheDtype = "auto"
    speculative_tokens: int = Field(0, ge=0, le=16)
    reasoning: Literal["on", "off"] = "on"
    thinking_budget: int | None = Field(None, ge=1)
    max_batched_tokens: int = Field(8192, ge=16)
    input_tokens: int = Field(8192, ge=1, description="Typical prompt length; the estimate decodes at this context")
    output_tokens: int = Field(1024, ge=1, description="Typical generated length per request")
    min_tokens_per_s_per_user: float | None = Field(
        None, gt=0, description="Latency target: decode speed each user must see; layouts are ranked by it")
    mamba_ssm_cache_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Mamba SSM state dtype (vLLM --mamba-ssm-cache-dtype); auto: the model config's")
    allow_long_context: bool = Field(
        False, description="Serve a max_context above the model's native one (vLLM: VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)")
    prefix_caching: bool | None = Field(
        None, description="Reuse the cache of shared prompt prefixes. embedded: off unless true (KV pages plus Mamba "
                          "state checkpoints, counted in the plan); vllm: --enable-prefix-caching, by default on "
                          "except with MTP on a hybrid model (vllm issue 39809)")
    mamba_checkpoint_interval: int = Field(
        256, ge=16, le=1_048_576, multiple_of=16,
        description="Tokens between Mamba state checkpoints of a cached prefix (embedded engine; a multiple of the "
                    "16-token KV block)")
    mamba_checkpoints: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Mamba state checkpoints each engine replica keeps for cached prefixes (embedded engine); "
                    "default: 2 per sequence of serving.concurrency the replica serves")


class Topology(Strict):
    name: DnsLabel
    description: FreeText = ""
    nodes: list[Node] = Field(min_length=1)
    interconnect: Interconnect = Interconnect()
    model: ModelRef
    engine: Engine = Engine()
    serving: Serving = Serving()

    @model_validator(mode="after")
    def unique_nodes(self) -> "Topology":
        seen: set[str] = set()
        for node in self.nodes:
            if node.name in seen:
                raise ValueError(f"node name {node.name!r} appears twice")
            seen.add(node.name)
        return self

    @property
    def node_count(self) -> int:
        return sum(node.count for node in self.nodes)

    @property
    def accelerator_count(self) -> int:
        return sum(node.count * node.accelerators.count for node in self.nodes)
