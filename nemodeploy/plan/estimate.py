"""Roofline estimate of decode and prefill throughput for one replica.

Each pipeline stage's step time is the slower of bytes moved over memory
bandwidth and FLOPs over peak, plus its collectives over the link they cross
(not overlapped: an upper bound on time, a lower bound on speed is not claimed
either; it is a roofline). A decode step passes every stage in turn; prefill
chunks pipeline through the stages. Efficiency factors are stated in the
assumptions, never hidden in the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemodeploy.models.accounting import decode_flops_per_token
from nemodeploy.models.config import NemotronHConfig
from nemodeploy.plan.layout import Layout
from nemodeploy.plan.memory import LayerBytes, expert_shards, stage_weight_bytes
from nemodeploy.plan.precision import DTYPE_BYTES, ComputePath
from nemodeploy.plan.types import Estimate, Stage
from nemodeploy.topology.catalog import Accelerator

MEMORY_EFFICIENCY = 0.80  # achievable share of datasheet HBM bandwidth for streaming weights
COMPUTE_EFFICIENCY = 0.60  # achievable share of dense peak for large GEMMs (prefill)
LINK_EFFICIENCY = 0.80
INTRA_NODE_LATENCY_S = 5e-6  # one NVLink / xGMI all-reduce hop
MTP_ACCEPTANCE = 0.70  # per-draft-token acceptance assumed for MTP speculative decoding


@dataclass(frozen=True)
class Links:
    intra_bytes_s: float
    intra_latency_s: float
    inter_bytes_s: float
    inter_latency_s: float
    tp_crosses_nodes: bool
    ep_crosses_nodes: bool
    pp_crosses_nodes: bool


def expected_experts_touched(experts: int, top_k: int, tokens: int) -> float:
    """Distinct experts a batch routes to, for uniformly spread routing."""
    if not experts:
        return 0.0
    return experts * (1 - (1 - top_k / experts) ** tokens)


def _allreduce_s(nbytes: float, ranks: int, bandwidth: float, latency: float) -> float:
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / (bandwidth * LINK_EFFICIENCY) + 2 * (ranks - 1) * latency


def _stage_step(*, config: NemotronHConfig, stage: Stage, layout: Layout, lb: LayerBytes, accel: Accelerator,
                path: ComputePath, links: Links, tokens: int, seqs: int, context: int, kv_tok: int,
                mamba_seq: int, act_bytes: int) -> tuple[float, str, float, float, float]:
    """(seconds, bound, bytes, flops, comm bytes) of one forward of `tokens` tokens on one rank of a stage."""
    weights = stage_weight_bytes(lb, stage, config, layout)
    routed = stage.moe_layers * lb.moe_experts / expert_shards(layout)
    # with data-parallel attention (ep > tp) a rank's experts serve the tokens of every replica in the ep group
    expert_tokens = tokens * max(layout.ep // layout.tp, 1)
    touched = expected_experts_touched(config.n_routed_experts, config.num_experts_per_tok, expert_tokens)
    share = touched / config.n_routed_experts if config.n_routed_experts else 0.0
    nbytes = weights - routed + routed * share + seqs * context * kv_tok + 2 * seqs * mamba_seq
    layers_share = (stage.layers[1] - stage.layers[0]) / config.num_layers
    flops = tokens * decode_flops_per_token(config, context) * layers_share / layout.tp
    mixer_layers = stage.layers[1] - stage.layers[0]
    tp_bw, tp_lat = (
        (links.inter_bytes_s, links.inter_latency_s) if links.tp_crosses_nodes else (links.intra_bytes_s, links.intra_latency_s)
    )
    tp_comm = tokens * config.hidden_size * act_bytes
    comm_s = mixer_layers * _allreduce_s(tp_comm, layout.tp, tp_bw, tp_lat)
    comm_bytes = mixer_layers * tp_comm * 2 * (layout.tp - 1) / layout.tp if layout.tp > 1 else 0.0
    if layout.ep > layout.tp:  # data-parallel attention: dispatch and combine across the ep group
        ep_bw, ep_lat = (
            (links.inter_bytes_s, links.inter_latency_s) if links.ep_crosses_nodes else (links.intra_bytes_s, links.intra_latency_s)
        )
        a2a = 2 * tokens * config.num_experts_per_tok * config.expert_input_size * act_bytes * (layout.ep - 1) / layout.ep
        comm_s += stage.moe_layers * (a2a / (ep_bw * LINK_EFFICIENCY) + 2 * ep_lat)
        comm_bytes += stage.moe_layers * a2a
    mem_s = nbytes / (accel.memory_bandwidth_bytes_s * MEMORY_EFFICIENCY)
    flop_s = flops / (accel.dense_tflops[path.flops_precision] * 1e12 * COMPUTE_EFFICIENCY)
    compute_s = max(mem_s, flop_s)
    bound = "memory" if mem_s >= flop_s else "compute"
    if comm_s > compute_s:
        bound = "communication"
    return compute_s + comm_s, bound, nbytes, flops, comm_bytes


def estimate(*, config: NemotronHConfig, layout: Layout, stages: list[Stage], lb: LayerBytes, accel: Accelerator,
             path: ComputePath, links: Links, batch: int, context: int, kv_tok: int, mamba_seq: int, act_dtype: str,
             spec_tokens: int, prefill_chunk: int) -> Estimate:
    act_bytes = DTYPE_BYTES[act_dtype]

    def pp_hop(tokens: int) -> float:
        if layout.pp == 1:
            return 0.0
        bandwidth, latency = ((links.inter_bytes_s, links.inter_latency_s) if links.pp_crosses_nodes
                              else (links.intra_bytes_s, links.intra_latency_s))
        return tokens * config.hidden_size * act_bytes / (bandwidth * LINK_EFFICIENCY) + latency

    def decode_step(tokens: int) -> tuple[float, str, float, float, float]:
        parts = [
            _stage_step(config=config, stage=s, layout=layout, lb=lb, accel=accel, path=path, links=links,
                        tokens=tokens, seqs=batch, context=context, kv_tok=kv_tok, mamba_seq=mamba_seq,
                        act_bytes=act_bytes)
            for s in stages
        ]
        seconds = sum(p[0] for p in parts) + (layout.pp - 1) * pp_hop(tokens)
        worst = max(parts, key=lambda p: p[0])
        return seconds, worst[1], max(p[2] for p in parts), max(p[3] for p in parts), max(p[4] for p in parts)

    step_s, bound, nbytes, flops, comm = decode_step(batch * (1 + spec_tokens))
    tokens_per_step = 1.0
    if spec_tokens:
        a = MTP_ACCEPTANCE
        tokens_per_step = (1 - a ** (spec_tokens + 1)) / (1 - a)
        mtp_bytes = lb.mtp_dense / layout.tp + lb.mtp_experts / expert_shards(layout) * (
            expected_experts_touched(config.n_routed_experts, config.num_experts_per_tok, batch) / max(config.n_routed_experts, 1)
        )
        step_s += spec_tokens * mtp_bytes / (accel.memory_bandwidth_bytes_s * MEMORY_EFFICIENCY)

    prefill = [
        _stage_step(config=config, stage=s, layout=layout, lb=lb, accel=accel, path=path, links=links,
                    tokens=prefill_chunk, seqs=1, context=prefill_chunk, kv_tok=kv_tok, mamba_seq=mamba_seq,
                    act_bytes=act_bytes)
        for s in stages
    ]
    slowest = max(prefill, key=lambda p: p[0])
    prefill_s = max(slowest[0], pp_hop(prefill_chunk))
    per_seq = tokens_per_step / step_s
    assumptions = [
        f"memory-bound work streams at {MEMORY_EFFICIENCY:.0%} of {accel.memory_bandwidth_bytes_s / 1e12:.2f} TB/s",
        f"GEMMs reach {COMPUTE_EFFICIENCY:.0%} of {accel.dense_tflops[path.flops_precision]:.0f} dense {path.flops_precision} TFLOP/s",
        f"collectives reach {LINK_EFFICIENCY:.0%} of link bandwidth, {INTRA_NODE_LATENCY_S * 1e6:.0f} us per intra-node hop; "
        "compute and communication do not overlap",
        f"decode batch {batch} per replica at context {context}; routing spreads tokens uniformly over experts",
        "a decode step passes every pipeline stage in turn (no micro-batching); prefill chunks pipeline",
    ]
    if spec_tokens:
        assumptions.append(
            f"MTP speculative decoding with {spec_tokens} draft tokens accepting {MTP_ACCEPTANCE:.0%} per token "
            f"({tokens_per_step:.2f} tokens per step)"
        )
    return Estimate(
        batch_per_replica=batch,
        decode_step_ms=step_s * 1e3,
        decode_tokens_per_s_per_sequence=per_seq,
        decode_tokens_per_s_per_replica=per_seq * batch,
        decode_tokens_per_s_total=per_seq * batch * layout.dp,
        decode_bound=bound,
        spec_tokens_per_step=tokens_per_step,
        prefill_tokens_per_s_per_replica=prefill_chunk / prefill_s,
        prefill_bound=slowest[1],
        bytes_per_decode_step_per_rank=int(nbytes),
        flops_per_decode_step_per_rank=flops,
        comm_bytes_per_decode_step_per_rank=int(comm),
        assumptions=assumptions,
    )
