"""Calibrated estimate of decode speed per user, total throughput and TTFT for one layout.

A forward pass on one rank of a pipeline stage costs
    max(weight bytes / (bandwidth x weight efficiency) + cache bytes / (bandwidth x cache efficiency),
        FLOPs / (dense peak x compute efficiency))
  + layers x per-layer overhead (+ a fixed cost per MoE layer where no tuned MoE kernel exists)
  + its collectives: per layer one tp all-reduce, per MoE layer an ep dispatch and combine when
    experts span data-parallel ranks, each at its real message size over the link it crosses.
The efficiencies are measured, per architecture and MoE kernel path (data/calibration.yaml, each
with its source), never per deployment. A decode step passes every stage in turn at the context the
workload really has (prompt plus half the output); prompts of arriving requests are prefilled in
chunks between decode steps and slow every user down by their share; MTP yields the expected
accepted drafts per step from a per-position acceptance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nemodeploy.models.accounting import decode_flops_per_token
from nemodeploy.models.config import NemotronHConfig
from nemodeploy.plan.calibration import ArchEfficiency, MoeKernel, calibration
from nemodeploy.plan.layout import Layout
from nemodeploy.plan.memory import LayerBytes, expert_shards, stage_weight_bytes
from nemodeploy.plan.precision import DTYPE_BYTES, ComputePath
from nemodeploy.plan.types import Estimate, Stage
from nemodeploy.topology.catalog import Accelerator


@dataclass(frozen=True)
class Links:
    intra_bytes_s: float
    intra_latency_s: float
    inter_bytes_s: float
    inter_latency_s: float
    tp_crosses_nodes: bool
    ep_crosses_nodes: bool
    pp_crosses_nodes: bool


@dataclass(frozen=True)
class Workload:
    """What the estimate serves: sequences in flight, their prompt and output lengths."""

    concurrency: int  # requests in flight over the whole deployment
    input_tokens: int
    output_tokens: int
    max_model_len: int
    max_num_seqs: int  # per replica, from the memory budget
    spec_tokens: int
    prefill_chunk: int

    @property
    def decode_context(self) -> int:
        """Mean context a decode step attends over: the prompt plus half the output."""
        return max(min(self.input_tokens + self.output_tokens // 2, self.max_model_len), 1)


@dataclass(frozen=True)
class _Pass:
    seconds: float
    bound: str
    nbytes: float
    flops: float
    comm: float


def expected_experts_touched(experts: int, top_k: int, tokens: int) -> float:
    """Distinct experts a batch routes to, for uniformly spread routing."""
    if not experts:
        return 0.0
    return experts * (1 - (1 - top_k / experts) ** tokens)


def allreduce_s(nbytes: float, ranks: int, bandwidth: float, hop_latency: float) -> float:
    """Ring all-reduce: 2 (n - 1) steps, each a hop; plus the launch of the collective."""
    if ranks <= 1:
        return 0.0
    c = calibration().collectives
    return c.software_latency_s + 2 * (ranks - 1) * hop_latency + 2 * (ranks - 1) / ranks * nbytes / (
        bandwidth * c.link_efficiency)


@dataclass(frozen=True)
class _Model:
    """Everything fixed for one layout; passes differ only in tokens, sequences and context."""

    config: NemotronHConfig
    layout: Layout
    lb: LayerBytes
    accel: Accelerator
    path: ComputePath
    links: Links
    eff: ArchEfficiency
    moe: MoeKernel
    kv_tok: int
    mamba_seq: int
    act_bytes: int

    def link(self, crosses: bool) -> tuple[float, float]:
        if crosses:
            return self.links.inter_bytes_s, self.links.inter_latency_s
        return self.links.intra_bytes_s, self.links.intra_latency_s

    def stage_pass(self, stage: Stage, tokens: int, seqs: int, context: int) -> _Pass:
        config, layout, bw = self.config, self.layout, self.accel.memory_bandwidth_bytes_s
        # the embedding lookup reads one row per token, not the table
        weights = stage_weight_bytes(self.lb, stage, config, layout) - (
            self.lb.embedding / layout.tp if stage.holds_embedding else 0.0)
        routed = stage.moe_layers * self.lb.moe_experts / expert_shards(layout)
        # with data-parallel attention (ep > tp) a rank's experts serve the tokens of every replica in the ep group
        expert_tokens = tokens * max(layout.ep // layout.tp, 1)
        touched = expected_experts_touched(config.n_routed_experts, config.num_experts_per_tok, expert_tokens)
        experts = routed * (touched / config.n_routed_experts if config.n_routed_experts else 0.0)
        cache = seqs * context * self.kv_tok + 2 * seqs * self.mamba_seq
        mem_s = ((weights - routed) / (bw * self.eff.weight_stream)
                 + experts / (bw * self.eff.weight_stream * self.moe.expert_efficiency)
                 + cache / (bw * self.eff.cache_stream))
        layers = stage.layers[1] - stage.layers[0]
        flops = tokens * decode_flops_per_token(config, context) * layers / config.num_layers / layout.tp
        flop_s = flops / (self.accel.dense_tflops[self.path.flops_precision] * 1e12 * self.eff.prefill_compute)
        overhead = layers * self.eff.layer_overhead_s + stage.moe_layers * self.moe.untuned_layer_s
        tp_bw, tp_hop = self.link(self.links.tp_crosses_nodes)
        tp_msg = tokens * config.hidden_size * self.act_bytes
        comm_s = layers * allreduce_s(tp_msg, layout.tp, tp_bw, tp_hop)
        comm = layers * tp_msg * 2 * (layout.tp - 1) / layout.tp if layout.tp > 1 else 0.0
        if layout.ep > layout.tp:  # dispatch and combine of the latent activations across the ep group
            ep_bw, ep_hop = self.link(self.links.ep_crosses_nodes)
            a2a = 2 * tokens * config.num_experts_per_tok * config.expert_input_size * self.act_bytes * (
                layout.ep - 1) / layout.ep
            c = calibration().collectives
            comm_s += stage.moe_layers * (a2a / (ep_bw * c.link_efficiency) + 2 * (c.software_latency_s + ep_hop))
            comm += stage.moe_layers * a2a
        parts = {"memory": mem_s, "compute": flop_s, "kernel": overhead, "communication": comm_s}
        return _Pass(max(mem_s, flop_s) + overhead + comm_s, max(parts, key=parts.get), weights - routed + experts
                     + cache, flops, comm)

    def pp_hop(self, tokens: int) -> float:
        if self.layout.pp == 1:
            return 0.0
        bandwidth, hop = self.link(self.links.pp_crosses_nodes)
        c = calibration().collectives
        return tokens * self.config.hidden_size * self.act_bytes / (bandwidth * c.link_efficiency) + hop + \
            c.software_latency_s

    def mtp_draft_s(self, seqs: int) -> float:
        """One draft pass of the MTP module (an attention and a MoE layer) for `seqs` sequences."""
        config, bw = self.config, self.accel.memory_bandwidth_bytes_s
        touched = expected_experts_touched(config.n_routed_experts, config.num_experts_per_tok, seqs)
        share = touched / config.n_routed_experts if config.n_routed_experts else 0.0
        experts = self.lb.mtp_experts / expert_shards(self.layout) * share
        mem_s = self.lb.mtp_dense / self.layout.tp / (bw * self.eff.weight_stream) + experts / (
            bw * self.eff.weight_stream * self.moe.expert_efficiency)
        layers = len(config.mtp_layer_types)
        moe_layers = config.mtp_layer_types.count("moe")
        return mem_s + layers * self.eff.layer_overhead_s + moe_layers * self.moe.untuned_layer_s


def estimate(*, config: NemotronHConfig, layout: Layout, stages: list[Stage], lb: LayerBytes, accel: Accelerator,
             path: ComputePath, links: Links, workload: Workload, kv_tok: int, mamba_seq: int, act_dtype: str
             ) -> Estimate:
    cal = calibration()
    moe = cal.moe_kernel(accel.arch, path.weights, config.n_routed_experts)
    model = _Model(config, layout, lb, accel, path, links, cal.arch(accel.arch), moe, kv_tok, mamba_seq,
                   DTYPE_BYTES[act_dtype])
    w = workload
    active = max(min(w.concurrency, layout.dp * max(w.max_num_seqs, 1)), 1)  # sequences decoding at once
    batch = math.ceil(active / layout.dp)
    context = w.decode_context
    k = w.spec_tokens

    tokens = batch * (1 + k)
    parts = [model.stage_pass(s, tokens, batch, context) for s in stages]
    step_s = sum(p.seconds for p in parts) + (layout.pp - 1) * model.pp_hop(tokens)
    if k:
        step_s += k * model.mtp_draft_s(batch)
    per_step = cal.tokens_per_step(k)
    worst = max(parts, key=lambda p: p.seconds)

    chunk = max(min(w.prefill_chunk, w.input_tokens), 1)
    prefill = [model.stage_pass(s, chunk, 1, max(chunk // 2, 1)) for s in stages]
    slowest = max(prefill, key=lambda p: p.seconds)
    prefill_rate = chunk / max(slowest.seconds, model.pp_hop(chunk))  # chunks pipeline through the stages
    # every generated token brings input/output prompt tokens to prefill, in chunks between decode steps
    interference_s = batch * per_step * w.input_tokens / w.output_tokens / prefill_rate
    user_step_s = step_s + interference_s
    per_user = per_step / user_step_s
    fill_s = sum(p.seconds for p in prefill) + (layout.pp - 1) * model.pp_hop(chunk)
    # a request's own prompt, behind on average half the prompts that arrived with it (a burst, or a
    # benchmark's closed loop of fixed-length requests, which keeps users in step)
    queued = (batch - 1) / 2 * w.input_tokens / prefill_rate
    ttft_s = queued + (math.ceil(w.input_tokens / chunk) - 1) * chunk / prefill_rate + fill_s + step_s
    busy = (w.output_tokens / per_user) / (ttft_s + w.output_tokens / per_user)

    band = cal.error_band
    assumptions = [
        f"decode at context {context:,} (prompt {w.input_tokens:,} + half of {w.output_tokens:,} output tokens), "
        f"{active} sequence(s) in flight: batch {batch} per replica",
        f"weights stream at {model.eff.weight_stream:.0%} of {accel.memory_bandwidth_bytes_s / 1e12:.2f} TB/s, "
        f"KV and Mamba state at {model.eff.cache_stream:.0%}; {model.eff.layer_overhead_s * 1e6:.0f} us per layer "
        f"of launch and sync ({accel.arch}, data/calibration.yaml)",
        f"MoE kernel: {moe.kernel} (experts at {moe.expert_efficiency:.0%} of that stream"
        + (f", {moe.untuned_layer_s * 1e3:.1f} ms per MoE layer: untuned)" if moe.untuned else ")"),
        f"GEMMs reach {model.eff.prefill_compute:.0%} of {accel.dense_tflops[path.flops_precision]:.0f} dense "
        f"{path.flops_precision} TFLOP/s; collectives {cal.collectives.link_efficiency:.0%} of link bandwidth plus "
        f"{cal.collectives.software_latency_s * 1e6:.0f} us per call and the hop latency per ring step",
        "a decode step passes every pipeline stage in turn; prompts are prefilled in chunks of "
        f"{chunk:,} between decode steps ({interference_s / user_step_s:.0%} of each user's time)",
        f"calibration: measured / estimate was {band[0]:.2f}-{band[1]:.2f} over the public measurements "
        "(benchmarks/planner_calibration.py)",
    ]
    if k:
        assumptions.append(f"MTP with {k} draft token(s), conditional acceptance "
                           f"{', '.join(f'{a:.2f}' for a in cal.mtp_acceptance[:k])} per position: "
                           f"{per_step:.2f} tokens per step")
    return Estimate(
        batch_per_replica=batch,
        decode_step_ms=step_s * 1e3,
        decode_tokens_per_s_per_sequence=per_user,
        decode_tokens_per_s_per_replica=per_user * batch,
        decode_tokens_per_s_total=per_user * active,
        decode_bound=worst.bound,
        spec_tokens_per_step=per_step,
        prefill_tokens_per_s_per_replica=prefill_rate,
        prefill_bound=slowest.bound,
        bytes_per_decode_step_per_rank=int(worst.nbytes),
        flops_per_decode_step_per_rank=worst.flops,
        comm_bytes_per_decode_step_per_rank=int(worst.comm),
        assumptions=assumptions,
        sequences_in_flight=active,
        decode_context=context,
        ttft_s=ttft_s,
        generated_tokens_per_s_total=per_user * active * busy,
        prefill_share=interference_s / user_step_s,
        moe_kernel=moe.kernel,
        moe_kernel_tuned=not moe.untuned,
        error_band=band,
    )
