"""The serving plan: the one structure every launcher, the operator and the playbooks read.

`Plan.model_dump(mode="json")` is what `nemodeploy plan --json` prints. It is
versioned by `schema_version`; fields are only ever added within a version.
docs/plan-json.md documents every field. Sizes are bytes, rates are per second.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1

Verdict = Literal["fits", "tight", "infeasible"]


def human_bytes(n: float) -> str:
    """Decimal units, as datasheets print them: 1.10 TB, 148.7 GB, 3.2 MB."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.{2 if unit == 'TB' else 1}f} {unit}"
    return f"{n:,.0f} B"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSummary(Frozen):
    name: str
    source: str
    model_type: str
    precision: str
    total_params: int
    active_params: int
    mtp_params: int
    mtp_loaded: bool
    weight_bytes: int  # whole model at the plan's precision (MTP included when loaded)
    routed_expert_bytes: int
    kv_bytes_per_token: int  # whole model, at the plan's KV dtype
    mamba_state_bytes_per_sequence: int  # whole model, at precision.mamba_ssm_dtype
    native_context: int  # the config's max_position_embeddings


class PrecisionPath(Frozen):
    weights: str  # bf16 | fp8 | nvfp4 | fp32
    compute: str  # e.g. "nvfp4 (native FP4 tensor cores)", "w4a16 (FP4 weights dequantised to BF16)"
    kv_cache_dtype: str  # bf16 | fp8 | fp32
    mamba_ssm_dtype: str  # float32 | bfloat16 | float16 (serving.mamba_ssm_cache_dtype, else the config's)


class Parallel(Frozen):
    tp_size: int
    pp_size: int
    dp_size: int
    ep_size: int  # ranks the routed experts are partitioned over (1 = experts sliced by tp)
    world_size: int
    gpus_per_replica: int
    kv_heads_per_rank: int
    kv_head_replication: int  # copies of each KV head across the tp group (1 = none)
    mamba_heads_per_rank: int
    mamba_groups_per_rank: int
    experts_per_rank: int


class Stage(Frozen):
    pp_rank: int
    layers: tuple[int, int]  # [start, end) over the main model's layers
    mamba_layers: int
    attention_layers: int
    moe_layers: int
    mlp_layers: int
    holds_embedding: bool
    holds_lm_head: bool
    holds_mtp: bool


class Rank(Frozen):
    rank: int
    node: str
    address: str
    device: int  # accelerator index on the node
    tp_rank: int
    pp_rank: int
    dp_rank: int
    ep_rank: int


class Memory(Frozen):
    """One GPU's memory on the heaviest pipeline stage."""

    capacity: int
    usable: int  # capacity x utilization
    utilization: float  # engine.memory_utilization, or the accelerator's default
    weights: int
    activations: int
    cuda_graphs: int
    kv_cache: int
    mamba_state: int
    mamba_checkpoints: int = 0  # prefix caching's Mamba state checkpoints (embedded engine; 0 when off)
    free: int  # usable minus everything above (>= 0 when the plan fits)
    runtime_reserve: int  # capacity - usable: CUDA context, NCCL buffers, allocator slack


class Capacity(Frozen):
    target_context: int
    target_concurrency: int
    sequences_at_target_context: int  # whole deployment (all replicas)
    context_at_target_concurrency: int  # 0 when even one token per sequence does not fit
    kv_bytes_per_token_per_rank: int
    mamba_state_bytes_per_sequence_per_rank: int


class CacheConfig(Frozen):
    """What one replica's engine allocates; launchers pass these straight through."""

    block_size: int
    num_kv_blocks: int  # per rank
    num_mamba_slots: int  # per rank (one per running sequence)
    max_num_seqs: int  # per replica
    max_model_len: int
    max_num_batched_tokens: int
    speculative_tokens: int
    long_context: bool  # max_model_len above the model's native context (serving.allow_long_context)
    prefix_caching: bool = False  # serving.prefix_caching as the engine runs it (vllm: on by default where safe)
    mamba_checkpoint_interval: int = 256  # tokens between Mamba checkpoints of a cached prefix
    num_mamba_checkpoints: int = 0  # per rank; the embedded engine's, 0 when prefix caching is off or engine vllm


class Estimate(Frozen):
    """Calibrated estimate (data/calibration.yaml): per replica unless named total or per user."""

    batch_per_replica: int
    decode_step_ms: float
    decode_tokens_per_s_per_sequence: float
    decode_tokens_per_s_per_replica: float
    decode_tokens_per_s_total: float
    decode_bound: Literal["memory", "compute", "communication", "kernel"]
    spec_tokens_per_step: float  # expected tokens per decode step with MTP (1.0 without)
    prefill_tokens_per_s_per_replica: float
    prefill_bound: Literal["memory", "compute", "communication", "kernel"]
    bytes_per_decode_step_per_rank: int
    flops_per_decode_step_per_rank: float
    comm_bytes_per_decode_step_per_rank: int
    assumptions: list[str]
    sequences_in_flight: int  # whole deployment: min(serving.concurrency, dp x max_num_seqs)
    decode_context: int  # tokens a decode step attends over on average (prompt + half the output)
    ttft_s: float  # time to first token of one request at this load
    generated_tokens_per_s_total: float  # whole deployment, time to first token included (what a benchmark counts)
    prefill_share: float  # share of each user's time spent waiting on other requests' prompt chunks
    moe_kernel: str  # the MoE kernel path the estimate assumes
    moe_kernel_tuned: bool  # false: no tuned kernel configuration for this shape (the plan warns)
    error_band: tuple[float, float]  # measured / estimate over the calibration anchors


class Cost(Frozen):
    """Dollars per million tokens at the planned throughput (data/prices.yaml)."""

    basis: str  # what the hourly figure is: a cloud price or owned hardware amortised
    dollars_per_hour: float
    input_dollars_per_mtok: float
    output_dollars_per_mtok: float
    utilization: float  # share of the hour the deployment serves at the planned load
    api: str  # the API price compared against
    api_input_dollars_per_mtok: float
    api_output_dollars_per_mtok: float
    capital_dollars: float | None  # owned hardware
    break_even_months: float | None  # months of API spend (same tokens) that pay the capital; None: never
    rank: int  # 1 = cheapest output $/Mtok among the profiles with a price
    ranked_against: list[str]  # profiles compared, cheapest first
    sources: list[str]


class Alternative(Frozen):
    change: str  # what to change, in words a user acts on
    accelerators: str
    count: int
    precision: str
    verdict: Verdict
    weights_per_gpu: int
    usable_per_gpu: int


class Plan(Frozen):
    schema_version: int = SCHEMA_VERSION
    topology: str
    accelerator: str
    accelerator_count: int
    node_count: int
    engine: Literal["embedded", "vllm"]
    verdict: Verdict
    reason: str  # one sentence with the numbers behind the verdict
    model: ModelSummary
    precision: PrecisionPath
    parallel: Parallel | None  # None only when infeasible before any layout was tried
    stages: list[Stage]
    ranks: list[Rank]
    memory: Memory | None
    capacity: Capacity | None
    cache: CacheConfig | None
    estimate: Estimate | None
    warnings: list[str]
    alternatives: list[Alternative]
    cost: Cost | None = None  # only with `plan --cost`

    @property
    def fits(self) -> bool:
        return self.verdict != "infeasible"
