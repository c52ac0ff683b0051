"""One rank's memory: weights of its shard, activations, graphs, then KV cache and Mamba state.

Weights are counted per layer kind from the model accounting and divided the
way the layout shards them (see layout.py). What remains of the usable memory
goes to the caches: every running sequence holds one Mamba state slot (fixed
size, whatever its length) plus KV for each token on the attention layers.
With the embedded engine's hybrid prefix caching, a fixed number of Mamba state
checkpoints (one slot's bytes each, engine/block_manager.CheckpointPool) comes off
the top before the caches are sized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nemodeploy.models.accounting import weight_bytes
from nemodeploy.models.config import NemotronHConfig
from nemodeploy.plan.layout import Layout
from nemodeploy.plan.precision import DTYPE_BYTES
from nemodeploy.plan.types import CacheConfig, Capacity, Memory, Stage

GiB = 1 << 30
CUDA_GRAPH_BYTES = 1 * GiB  # captured decode graphs for the usual batch sizes; none on CPU
ACTIVATION_BUFFERS = 4  # live hidden-size buffers per token: residual, normed input, mixer output, partial sums
KV_BLOCK_SIZE = 16
SSM_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
"""Mamba SSM state dtypes, as vLLM's --mamba-ssm-cache-dtype spells them."""


@dataclass(frozen=True)
class LayerBytes:
    """Weight bytes of one layer of each kind at the plan's precision."""

    mamba: float
    attention_qo: float
    attention_kv: float
    moe_dense: float  # router, latent projections, shared expert
    moe_experts: float  # routed experts
    mlp: float
    embedding: float
    lm_head: float
    mtp_dense: float
    mtp_experts: float


def layer_bytes(config: NemotronHConfig, precision: str) -> LayerBytes:
    wb = weight_bytes(config, precision)
    part = wb.by_component

    def per(component: str, kind: str) -> float:
        count = config.count(kind)
        return part.get(component, 0) / count if count else 0.0

    attention = per("attention", "attention")
    kv_share = (2 * config.num_key_value_heads) / (2 * config.num_key_value_heads + 2 * config.num_attention_heads)
    moe_dense = sum(per(c, "moe") for c in ("moe_shared_experts", "moe_router", "moe_latent_proj"))
    moe_experts = per("moe_routed_experts", "moe")
    expert_share = moe_experts / (moe_experts + moe_dense) if moe_experts else 0.0
    mtp = wb.mtp_bytes
    mtp_expert_share = expert_share * (1 if "moe" in config.mtp_layer_types else 0)
    return LayerBytes(
        mamba=per("mamba", "mamba"),
        attention_qo=attention * (1 - kv_share),
        attention_kv=attention * kv_share,
        moe_dense=moe_dense,
        moe_experts=moe_experts,
        mlp=per("mlp", "mlp"),
        embedding=part.get("embedding", 0),
        lm_head=part.get("lm_head", 0),
        mtp_dense=mtp * (1 - mtp_expert_share),
        mtp_experts=mtp * mtp_expert_share,
    )


def expert_shards(layout: Layout) -> int:
    """Ranks that split one stage's routed experts: the ep group, or the tp group slicing each expert."""
    return layout.ep if layout.ep > 1 else layout.tp


def kv_heads_per_rank(config: NemotronHConfig, tp: int) -> int:
    return max(config.num_key_value_heads // tp, 1)


def mamba_groups_per_rank(config: NemotronHConfig, tp: int) -> int:
    return max(config.n_groups // tp, 1)


def stage_weight_bytes(lb: LayerBytes, stage: Stage, config: NemotronHConfig, layout: Layout) -> float:
    tp = layout.tp
    kv_copies = kv_heads_per_rank(config, tp) / config.num_key_value_heads
    experts = expert_shards(layout)
    total = (
        stage.mamba_layers * lb.mamba / tp
        + stage.attention_layers * (lb.attention_qo / tp + lb.attention_kv * kv_copies)
        + stage.moe_layers * (lb.moe_dense / tp + lb.moe_experts / experts)
        + stage.mlp_layers * lb.mlp / tp
    )
    if stage.holds_embedding:
        total += lb.embedding / tp
    if stage.holds_lm_head:
        total += lb.lm_head / tp
    if stage.holds_mtp:
        total += lb.mtp_dense / tp + lb.mtp_experts / experts
    return total


def kv_bytes_per_token_per_rank(config: NemotronHConfig, stage: Stage, tp: int, kv_dtype: str) -> int:
    return stage.attention_layers * 2 * kv_heads_per_rank(config, tp) * config.head_dim * DTYPE_BYTES[kv_dtype]


def mamba_bytes_per_sequence_per_rank(config: NemotronHConfig, stage: Stage, tp: int, act_dtype: str,
                                      ssm_dtype: str) -> int:
    ssm_bytes = SSM_DTYPE_BYTES[ssm_dtype]
    heads = config.mamba_num_heads // tp if config.mamba_num_heads else 0
    conv_channels = heads * config.mamba_head_dim + 2 * mamba_groups_per_rank(config, tp) * config.ssm_state_size
    per_layer = (
        heads * config.mamba_head_dim * config.ssm_state_size * ssm_bytes
        + conv_channels * (config.conv_kernel - 1) * DTYPE_BYTES[act_dtype]
    )
    return stage.mamba_layers * per_layer


def activation_bytes(config: NemotronHConfig, stage: Stage, layout: Layout, tokens: int, max_seqs: int,
                     spec_tokens: int, act_dtype: str) -> int:
    """Peak transient memory of one forward over a prefill chunk of `tokens` tokens."""
    b = DTYPE_BYTES[act_dtype]
    tp = layout.tp
    hidden = tokens * config.hidden_size * b * ACTIVATION_BUFFERS
    mamba_proj = (2 * config.mamba_d_inner + 2 * config.n_groups * config.ssm_state_size + config.mamba_num_heads)
    mamba = tokens * mamba_proj // tp * b if stage.mamba_layers else 0
    moe = 0
    if stage.moe_layers and config.n_routed_experts:
        routed_rows = tokens * config.num_experts_per_tok / expert_shards(layout) * (tp if layout.ep > 1 else 1)
        width = config.moe_intermediate_size // (1 if layout.ep > 1 else tp)
        moe = int(routed_rows * (width + config.expert_input_size) * b)
        moe += tokens * config.moe_shared_expert_intermediate_size // tp * b
    mlp = tokens * config.intermediate_size // tp * b if stage.mlp_layers else 0
    logits = max_seqs * (spec_tokens + 1) * config.vocab_size // tp * 4 if stage.holds_lm_head else 0
    return int(hidden + max(mamba, moe, mlp) + logits)


@dataclass(frozen=True)
class PrefixCaching:
    """Prefix caching as the engine will run it. `checkpoints`: Mamba state checkpoints each rank
    holds besides its slots (None: 2 per sequence of the replica's target concurrency; 0: none)."""

    on: bool = False
    interval: int = 256
    checkpoints: int | None = 0

    def checkpoints_for(self, per_replica_seqs: int) -> int:
        if not self.on:
            return 0
        return 2 * per_replica_seqs if self.checkpoints is None else self.checkpoints


@dataclass(frozen=True)
class Budget:
    memory: Memory
    capacity: Capacity
    cache: CacheConfig


def budget(*, config: NemotronHConfig, layout: Layout, stages: list[Stage], lb: LayerBytes, capacity_bytes: int,
           utilization: float, on_gpu: bool, kv_dtype: str, act_dtype: str, ssm_dtype: str, target_context: int,
           target_concurrency: int, max_batched_tokens: int, spec_tokens: int,
           prefix: PrefixCaching = PrefixCaching()) -> Budget:
    """Size the caches of the heaviest stage; every stage gets the same counts so the pipeline stays in step."""
    usable = int(capacity_bytes * utilization)
    per_replica_seqs = math.ceil(target_concurrency / layout.dp)
    tokens = min(max_batched_tokens, max(target_context, 1))
    num_checkpoints = prefix.checkpoints_for(per_replica_seqs)

    def stage_cost(stage: Stage) -> tuple[int, int, int, int, int]:
        weights = int(stage_weight_bytes(lb, stage, config, layout))
        acts = activation_bytes(config, stage, layout, tokens, per_replica_seqs, spec_tokens, act_dtype)
        kv_tok = kv_bytes_per_token_per_rank(config, stage, layout.tp, kv_dtype)
        mamba_seq = mamba_bytes_per_sequence_per_rank(config, stage, layout.tp, act_dtype, ssm_dtype)
        return weights, acts, num_checkpoints * mamba_seq, kv_tok, mamba_seq

    graphs = CUDA_GRAPH_BYTES if on_gpu else 0
    costs = [stage_cost(s) for s in stages]
    # the binding stage is the one with least room per sequence at the target context
    def room(cost: tuple[int, int, int, int, int]) -> float:
        weights, acts, checkpoints, kv_tok, mamba_seq = cost
        per_seq = mamba_seq + kv_tok * target_context
        return (usable - weights - acts - graphs - checkpoints) / per_seq if per_seq else math.inf

    weights, acts, checkpoints, kv_tok, mamba_seq = min(costs, key=room)
    cache_room = usable - weights - acts - graphs - checkpoints
    per_seq = mamba_seq + kv_tok * target_context
    seqs_fit = max(int(cache_room // per_seq), 0) if per_seq else per_replica_seqs * 64
    if cache_room <= 0:
        context_fit = 0
    elif kv_tok == 0:
        context_fit = target_context if cache_room >= per_replica_seqs * mamba_seq else 0
    else:
        context_fit = max(int((cache_room / per_replica_seqs - mamba_seq) // kv_tok), 0)

    max_seqs = max(min(per_replica_seqs, seqs_fit), 0)
    max_model_len = target_context
    if max_seqs == 0 and kv_tok and cache_room >= mamba_seq + KV_BLOCK_SIZE * kv_tok:
        # not one sequence of the target context fits, but a shorter one does: serve that, say so
        max_seqs = 1
        max_model_len = int((cache_room - mamba_seq) // (KV_BLOCK_SIZE * kv_tok)) * KV_BLOCK_SIZE
    mamba_state = max_seqs * mamba_seq
    # never allocate more KV than max_seqs sequences of max_model_len tokens can use
    kv_needed = max_seqs * max_model_len * kv_tok
    kv_cache = max(min(cache_room - mamba_state, kv_needed), 0) if max_seqs else 0
    block_bytes = KV_BLOCK_SIZE * kv_tok
    num_blocks = int(kv_cache // block_bytes) if block_bytes else 0
    kv_cache = num_blocks * block_bytes
    memory = Memory(
        capacity=capacity_bytes,
        usable=usable,
        utilization=utilization,
        weights=weights,
        activations=acts,
        cuda_graphs=graphs,
        kv_cache=kv_cache,
        mamba_state=mamba_state,
        mamba_checkpoints=checkpoints,
        free=usable - weights - acts - graphs - checkpoints - kv_cache - mamba_state,
        runtime_reserve=capacity_bytes - usable,
    )
    capacity = Capacity(
        target_context=target_context,
        target_concurrency=target_concurrency,
        sequences_at_target_context=seqs_fit * layout.dp,
        context_at_target_concurrency=min(context_fit, 1_048_576),
        kv_bytes_per_token_per_rank=kv_tok,
        mamba_state_bytes_per_sequence_per_rank=mamba_seq,
    )
    cache = CacheConfig(
        block_size=KV_BLOCK_SIZE,
        num_kv_blocks=num_blocks,
        num_mamba_slots=max_seqs,
        max_num_seqs=max_seqs,
        max_model_len=max_model_len,
        max_num_batched_tokens=max_batched_tokens,
        speculative_tokens=spec_tokens,
        long_context=max_model_len > config.max_position_embeddings,
        prefix_caching=prefix.on,
        mamba_checkpoint_interval=prefix.interval,
        num_mamba_checkpoints=num_checkpoints,
    )
    return Budget(memory, capacity, cache)
