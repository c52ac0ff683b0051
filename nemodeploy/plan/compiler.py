"""Topology + model -> serving plan.

Search every valid layout (layout.py), budget each rank's memory (memory.py),
estimate each (estimate.py), and keep the one a user would pick: first the layouts
that hold the serving target (concurrency at the target context), then those that
give each user the decode speed asked for (serving.min_tokens_per_s_per_user), then
the most throughput the given concurrency can draw. When nothing fits, the plan says
why with the numbers and lists the nearest topologies that would.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemodeploy.models.accounting import account, kv_bytes_per_token, mamba_state_bytes_per_sequence, weight_bytes
from nemodeploy.models.config import ConfigError, NemotronHConfig
from nemodeploy.models.specs import resolve_model
from nemodeploy.plan import layout as layouts
from nemodeploy.plan.calibration import calibration
from nemodeploy.plan.estimate import Links, Workload, estimate
from nemodeploy.plan.memory import (SSM_DTYPE_BYTES, Budget, PrefixCaching, budget, kv_heads_per_rank, layer_bytes,
                                    mamba_groups_per_rank)
from nemodeploy.plan.precision import DTYPE_BYTES, ComputePath, compute_path, kv_dtype
from nemodeploy.plan.types import Alternative, Estimate, ModelSummary, Parallel, Plan, PrecisionPath, human_bytes
from nemodeploy.topology.catalog import ACCELERATORS, NETWORKS, Accelerator, Network
from nemodeploy.topology.schema import Topology

DEFAULT_INTER_NODE = "ethernet-100g"


class PlanInputError(ValueError):
    """The topology asks for something the model or cluster cannot do; `field` locates it in the YAML."""

    def __init__(self, field: tuple[str | int, ...], message: str):
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class _Candidate:
    layout: layouts.Layout
    stages: list
    budget: Budget
    estimate: Estimate
    link_warnings: list[str]

    @property
    def decode_tokens_per_s(self) -> float:
        return self.estimate.decode_tokens_per_s_total

    @property
    def per_user(self) -> float:
        return self.estimate.decode_tokens_per_s_per_sequence

    @property
    def meets_target(self) -> bool:
        cap = self.budget.capacity
        return cap.sequences_at_target_context >= cap.target_concurrency

    @property
    def serves(self) -> bool:
        return self.budget.cache.max_num_seqs >= 1


def _hardware(topology: Topology) -> tuple[Accelerator, int]:
    kinds = {node.accelerators.kind for node in topology.nodes}
    if len(kinds) > 1:
        raise PlanInputError(("nodes",), f"nodes mix accelerator kinds {sorted(kinds)}; plan one kind per topology")
    per_node = {node.accelerators.count for node in topology.nodes}
    if len(per_node) > 1:
        raise PlanInputError(("nodes",), f"nodes differ in accelerator count {sorted(per_node)}; give every node the same")
    return ACCELERATORS[kinds.pop()], per_node.pop()


def _links(topology: Topology, accel: Accelerator, layout: layouts.Layout, per_node: int,
           warnings: list[str]) -> Links:
    inter: Network | None = NETWORKS.get(topology.interconnect.inter_node or "")
    if inter is None and topology.node_count > 1:
        nics = topology.nodes[0].nics
        if nics:
            bandwidth = max(nic.speed_gbps for nic in nics) * 1e9 / 8
            latency = 5e-6 if any(nic.rdma for nic in nics) else 30e-6
            warnings.append("interconnect.inter_node not given: the estimate uses the fastest NIC's speed")
        else:
            inter = NETWORKS[DEFAULT_INTER_NODE]
            warnings.append(f"neither interconnect.inter_node nor NICs given: the estimate assumes {inter.name}")
    # devices of a node without a peer link (CPU processes, one-GPU nodes) exchange through host memory
    intra = accel.intra_node_bandwidth_bytes_s or accel.memory_bandwidth_bytes_s
    hop = calibration().collectives.intra_node_hop_s
    if inter is not None:
        bandwidth, latency = inter.bandwidth_bytes_s, inter.latency_s
    elif topology.node_count == 1:
        bandwidth, latency = intra, hop
    return Links(
        intra_bytes_s=intra,
        intra_latency_s=hop,
        inter_bytes_s=bandwidth,
        inter_latency_s=latency,
        tp_crosses_nodes=layout.tp > per_node,
        ep_crosses_nodes=layout.ep > per_node,
        pp_crosses_nodes=layout.replica_size > per_node,
    )


def _resolve(topology: Topology) -> tuple[str, str, NemotronHConfig]:
    try:
        resolved = resolve_model(topology.model.id, topology.model.path)
    except ConfigError as err:
        raise PlanInputError(("model", "path" if topology.model.path else "id"), str(err)) from None
    return resolved.name, resolved.source, resolved.config


def _prefix_caching(topology: Topology, config: NemotronHConfig) -> PrefixCaching:
    """serving.prefix_caching as the engine runs it. The embedded engine: off unless asked, and then its
    Mamba state checkpoints are counted here. vLLM: on by default except with MTP on a hybrid model (vllm
    issue 39809: asked for anyway, the launch refuses it); it keeps cached Mamba states in its KV pool."""
    serving = topology.serving
    if topology.engine.kind == "embedded":
        return PrefixCaching(bool(serving.prefix_caching), serving.mamba_checkpoint_interval,
                             serving.mamba_checkpoints)
    safe = not (serving.speculative_tokens and config.count("mamba"))
    on = safe if serving.prefix_caching is None else serving.prefix_caching
    return PrefixCaching(on, serving.mamba_checkpoint_interval, 0)


def _ssm_dtype(config: NemotronHConfig, serving) -> str:
    """serving.mamba_ssm_cache_dtype, or the config's when `auto`."""
    dtype = config.mamba_ssm_cache_dtype if serving.mamba_ssm_cache_dtype == "auto" else serving.mamba_ssm_cache_dtype
    if dtype not in SSM_DTYPE_BYTES:
        raise PlanInputError(("serving", "mamba_ssm_cache_dtype"),
                             f"the model config's mamba_ssm_cache_dtype {dtype!r} is not one of "
                             f"{', '.join(SSM_DTYPE_BYTES)}; set serving.mamba_ssm_cache_dtype")
    return dtype


def _check_context(name: str, native: int, serving) -> None:
    """A context above the model's native one only with the explicit opt-in (engines refuse it otherwise)."""
    if serving.max_context > native and not serving.allow_long_context:
        raise PlanInputError(("serving", "max_context"),
                             f"max_context {serving.max_context:,} is above {name}'s native context of {native:,} "
                             "tokens; set serving.allow_long_context: true to serve it (the engine must be told "
                             "too), or lower max_context")


def _fixed_sizes(topology: Topology) -> dict[str, int | None]:
    return topology.engine.parallel.model_dump()


def _explain_no_layout(config: NemotronHConfig, fixed: dict[str, int | None], world: int, per_node: int,
                       engine: str) -> str:
    """The rule that rejects the user's sizes, or the general reason when none were fixed."""
    tp = fixed.get("tp_size") or 1
    pp = fixed.get("pp_size") or 1
    dp = fixed.get("dp_size") or max(world // (tp * pp), 1)
    ep = fixed.get("ep_size") or 1
    if engine == "embedded" and ep not in (1, tp):
        return (f"the embedded engine's dp replicas are separate engines: ep_size must be 1 or tp_size ({tp}); "
                "expert parallel across replicas needs engine.kind: vllm")
    try:
        partial = all(fixed.get(k) for k in ("tp_size", "pp_size", "dp_size"))
        layouts.check(config, layouts.Layout(tp, pp, dp, ep), world, per_node, partial=partial)
    except layouts.LayoutError as err:
        return str(err)
    return f"no tp/pp/dp/ep combination with {fixed} uses the {world} GPUs"


def compile_plan(topology: Topology, *, with_alternatives: bool = True) -> Plan:
    name, source, config = _resolve(topology)
    accel, per_node = _hardware(topology)
    world = topology.accelerator_count
    serving = topology.serving
    warnings: list[str] = []

    path = compute_path(topology.model.precision, accel)
    kv = kv_dtype(serving.kv_cache_dtype, accel)
    act_dtype = "fp32" if topology.model.precision == "fp32" else "bf16"
    ssm_dtype = _ssm_dtype(config, serving)
    utilization = topology.engine.memory_utilization or calibration().default_memory_utilization(accel.arch)
    native = config.max_position_embeddings
    _check_context(name, native, serving)
    with_mtp = serving.speculative_tokens > 0
    if with_mtp and not config.num_nextn_predict_layers:
        raise PlanInputError(("serving", "speculative_tokens"), f"{name} has no MTP layer to draft speculative tokens with")
    acct = account(config)
    weights = weight_bytes(config, topology.model.precision)
    total_weight_bytes = weights.total_bytes + (weights.mtp_bytes if with_mtp else 0)
    summary = ModelSummary(
        name=name, source=source, model_type=config.model_type, precision=topology.model.precision,
        total_params=acct.total_params, active_params=acct.active_params, mtp_params=acct.mtp_params,
        mtp_loaded=with_mtp, weight_bytes=total_weight_bytes, routed_expert_bytes=weights.routed_expert_bytes,
        kv_bytes_per_token=_kv_per_token(config, kv),
        mamba_state_bytes_per_sequence=_mamba_per_seq(config, act_dtype, ssm_dtype), native_context=native,
    )
    precision = PrecisionPath(weights=path.weights, compute=path.compute, kv_cache_dtype=kv, mamba_ssm_dtype=ssm_dtype)
    plan_base = dict(
        topology=topology.name, accelerator=accel.kind, accelerator_count=world, node_count=topology.node_count,
        engine=topology.engine.kind, model=summary, precision=precision,
    )
    if serving.max_context > native:
        warnings.append(f"max_context {serving.max_context:,} is above the native {native:,} (allow_long_context): "
                        "the engine must be told too (vLLM: VLLM_ALLOW_LONG_MAX_MODEL_LEN=1), and quality past "
                        f"{native:,} tokens is the model's extension, not its training length")

    if not path.supported:
        alternatives = _alternatives(topology, accel, per_node) if with_alternatives else []
        return Plan(**plan_base, verdict="infeasible", reason=path.reason, parallel=None, stages=[], ranks=[],
                    memory=None, capacity=None, cache=None, estimate=None, warnings=warnings, alternatives=alternatives)

    fixed = _fixed_sizes(topology)
    found = layouts.candidates(config, world, per_node, fixed, topology.engine.kind)
    if not found:
        field = next((("engine", "parallel", k) for k, v in fixed.items() if v is not None), ("nodes",))
        raise PlanInputError(field, _explain_no_layout(config, fixed, world, per_node, topology.engine.kind))

    lb = layer_bytes(config, topology.model.precision)
    prefix = _prefix_caching(topology, config)
    if serving.mamba_checkpoints is not None and topology.engine.kind == "vllm":
        warnings.append("serving.mamba_checkpoints sizes the embedded engine's prefix cache; vLLM keeps its own "
                        "(in the KV pool) and ignores it")
    evaluated = []
    for layout in found:
        stages = layouts.split_stages(config, layout.pp, with_mtp)
        b = budget(
            config=config, layout=layout, stages=stages, lb=lb, capacity_bytes=accel.memory_bytes,
            utilization=utilization, on_gpu=accel.arch != "cpu", kv_dtype=kv,
            act_dtype=act_dtype, ssm_dtype=ssm_dtype, target_context=serving.max_context,
            target_concurrency=serving.concurrency,
            max_batched_tokens=serving.max_batched_tokens, spec_tokens=serving.speculative_tokens,
            prefix=prefix,
        )
        link_warnings: list[str] = []
        speed = _estimate(config, layout, stages, lb, accel, path, topology, per_node, b, act_dtype, link_warnings)
        evaluated.append(_Candidate(layout, stages, b, speed, link_warnings))

    best = max(evaluated, key=lambda c: _preference(c, serving.min_tokens_per_s_per_user))
    layout, b = best.layout, best.budget
    mem, cap = b.memory, b.capacity
    total_usable = mem.usable * world
    fixed_parts = (f"{human_bytes(mem.weights)} of weights + {human_bytes(mem.activations)} of activations + "
                   f"{human_bytes(mem.cuda_graphs)} of CUDA graphs")
    if mem.mamba_checkpoints:
        fixed_parts += f" + {human_bytes(mem.mamba_checkpoints)} of Mamba prefix-cache checkpoints"
    if not best.serves:
        verdict = "infeasible"
        reason = (
            f"{human_bytes(total_weight_bytes)} of {path.weights} weights do not fit in {world} x {accel.name} "
            f"({human_bytes(mem.capacity * world)}, {human_bytes(total_usable)} usable): even the best layout "
            f"(tp {layout.tp}, pp {layout.pp}, ep {layout.ep}) needs {fixed_parts} per device, then one sequence's "
            f"cache, on {human_bytes(mem.usable)} usable ({mem.utilization:.2f} of {human_bytes(mem.capacity)})"
        )
    elif best.meets_target:
        verdict = "fits"
        reason = (
            f"{human_bytes(total_weight_bytes)} of {path.weights} weights on {world} x {accel.name}: "
            f"{fixed_parts} of {human_bytes(mem.usable)} usable per device; holds {cap.sequences_at_target_context} "
            f"sequences of {serving.max_context:,} tokens (target {serving.concurrency})"
        )
    else:
        verdict = "tight"
        reason = (
            f"{human_bytes(total_weight_bytes)} of {path.weights} weights on {world} x {accel.name}: {fixed_parts} "
            f"leave {human_bytes(mem.usable - mem.weights - mem.activations - mem.cuda_graphs - mem.mamba_checkpoints)} of "
            f"{human_bytes(mem.usable)} per device for caches: "
            f"{cap.sequences_at_target_context} sequences of {serving.max_context:,} tokens (target {serving.concurrency}); "
            f"{serving.concurrency} sequences get {cap.context_at_target_concurrency:,} tokens each"
        )
    warnings += _layout_warnings(config, layout, per_node, topology)
    used = layout.replica_size * layout.dp
    if used < world:
        warnings.append(f"the fixed parallel sizes use {used} of the {world} devices (the first in node order)")
    if best.serves:
        warnings += best.link_warnings
        warnings += _estimate_warnings(best, serving)
    alternatives = _alternatives(topology, accel, per_node) if with_alternatives and verdict == "infeasible" else []
    return Plan(
        **plan_base, verdict=verdict, reason=reason,
        parallel=Parallel(
            tp_size=layout.tp, pp_size=layout.pp, dp_size=layout.dp, ep_size=layout.ep, world_size=used,
            gpus_per_replica=layout.replica_size, kv_heads_per_rank=kv_heads_per_rank(config, layout.tp),
            kv_head_replication=max(layout.tp // config.num_key_value_heads, 1),
            mamba_heads_per_rank=config.mamba_num_heads // layout.tp if config.mamba_num_heads else 0,
            mamba_groups_per_rank=mamba_groups_per_rank(config, layout.tp),
            experts_per_rank=config.n_routed_experts // (layout.ep if layout.ep > 1 else 1),
        ),
        stages=best.stages, ranks=layouts.place_ranks(topology, layout), memory=mem, capacity=cap,
        cache=b.cache if best.serves else None, estimate=best.estimate if best.serves else None, warnings=warnings, alternatives=alternatives,
    )


def _preference(c: _Candidate, latency_target: float | None) -> tuple:
    """What a user would pick, in order: a layout that serves; one that holds the serving target;
    one that gives each user the asked decode speed; the most throughput the concurrency draws
    (at a fixed concurrency that is the fastest decode per user); then fewer stages, smaller tp.

    Among layouts that cannot serve, the one needing the least memory per GPU is shown.
    """
    cap = c.budget.capacity
    if not c.serves:
        return (False, False, False, -c.budget.memory.weights, 0, 0, 0)
    fast_enough = latency_target is None or c.per_user >= latency_target
    merit = c.decode_tokens_per_s if c.meets_target else cap.sequences_at_target_context
    return (True, c.meets_target, fast_enough, merit, cap.context_at_target_concurrency, -c.layout.pp, -c.layout.tp)


def _estimate(config, layout, stages, lb, accel, path: ComputePath, topology: Topology, per_node: int, b: Budget,
              act_dtype: str, warnings: list[str]):
    serving = topology.serving
    # a request longer than the context served is cut down, prompt and output in proportion
    scale = min(serving.max_context / (serving.input_tokens + serving.output_tokens), 1.0)
    workload = Workload(
        concurrency=serving.concurrency, input_tokens=max(int(serving.input_tokens * scale), 1),
        output_tokens=max(int(serving.output_tokens * scale), 1),
        max_model_len=b.cache.max_model_len or serving.max_context, max_num_seqs=b.cache.max_num_seqs,
        spec_tokens=serving.speculative_tokens, prefill_chunk=serving.max_batched_tokens,
    )
    return estimate(
        config=config, layout=layout, stages=stages, lb=lb, accel=accel, path=path,
        links=_links(topology, accel, layout, per_node, warnings), workload=workload,
        kv_tok=b.capacity.kv_bytes_per_token_per_rank, mamba_seq=b.capacity.mamba_state_bytes_per_sequence_per_rank,
        act_dtype=act_dtype,
    )


def _estimate_warnings(best: _Candidate, serving) -> list[str]:
    out, e = [], best.estimate
    if not e.moe_kernel_tuned:
        out.append(f"no tuned MoE kernel for this shape: {e.moe_kernel}; decode is kernel-limited "
                   f"({e.decode_tokens_per_s_per_sequence:.1f} tok/s per user): tune the fused-MoE config for the "
                   "shape, or use a checkpoint / GPU with a tuned path")
    target = serving.min_tokens_per_s_per_user
    if target and e.decode_tokens_per_s_per_sequence < target:
        out.append(f"no layout reaches {target:g} tok/s per user at concurrency {serving.concurrency}: the chosen one "
                   f"gives {e.decode_tokens_per_s_per_sequence:.1f}")
    if e.sequences_in_flight < serving.concurrency:
        out.append(f"{serving.concurrency} requests asked, {e.sequences_in_flight} decode at once "
                   "(the memory budget's max_num_seqs); the rest queue")
    return out


def _kv_per_token(config: NemotronHConfig, kv: str) -> int:
    return int(kv_bytes_per_token(config, DTYPE_BYTES[kv]))


def _mamba_per_seq(config: NemotronHConfig, act_dtype: str, ssm_dtype: str) -> int:
    return int(mamba_state_bytes_per_sequence(config, ssm_dtype_bytes=SSM_DTYPE_BYTES[ssm_dtype],
                                              conv_dtype_bytes=DTYPE_BYTES[act_dtype]))


def _layout_warnings(config: NemotronHConfig, layout: layouts.Layout, per_node: int, topology: Topology) -> list[str]:
    out = []
    if config.num_key_value_heads and layout.tp > config.num_key_value_heads:
        out.append(
            f"tp_size {layout.tp} exceeds the {config.num_key_value_heads} KV heads: each KV head is stored "
            f"{layout.tp // config.num_key_value_heads} times across the tp group"
        )
    if layout.tp > per_node:
        out.append(f"tp_size {layout.tp} spans nodes: every layer's all-reduce crosses the network")
    if topology.node_count > 1:
        infiniband = (topology.interconnect.inter_node or "").startswith("ib-")
        for node in topology.nodes:
            for nic in node.nics:
                # InfiniBand's MTU is at most 4096 by its spec; only RoCE (Ethernet) wants jumbo frames
                if nic.rdma and nic.mtu < 9000 and not (infiniband or nic.name.startswith("ib")):
                    out.append(f"{node.name}/{nic.name}: RoCE NIC at MTU {nic.mtu}; RoCE wants 9000 on every port of the path")
    return out


def _alternatives(topology: Topology, accel: Accelerator, per_node: int) -> list[Alternative]:
    """The nearest topologies that would serve: another precision here, or more nodes of this kind."""
    out: list[Alternative] = []
    current = topology.model.precision
    for precision in ("nvfp4", "fp8", "bf16"):
        if precision == current or not compute_path(precision, accel).supported:
            continue
        changed = topology.model_copy(update={"model": topology.model.model_copy(update={"precision": precision})})
        alt = _try(changed, f"use the {precision.upper()} checkpoint ({compute_path(precision, accel).compute})")
        if alt and alt.verdict != "infeasible":
            out.append(alt)
    if compute_path(current, accel).supported:
        last = topology.nodes[-1]
        for extra in range(1, 4 * max(topology.node_count, 1) + 1):
            grown = topology.model_copy(update={"nodes": [*topology.nodes, last.model_copy(update={"name": f"{last.name}+", "count": extra})]})
            gpus = grown.accelerator_count
            alt = _try(grown, f"use {gpus} GPUs ({grown.node_count} nodes of {per_node} x {accel.name})")
            if alt and alt.verdict != "infeasible":
                out.append(alt)
                break
    return out


def _try(topology: Topology, change: str) -> Alternative | None:
    try:
        plan = compile_plan(topology, with_alternatives=False)
    except PlanInputError:
        return None
    mem = plan.memory
    return Alternative(
        change=change, accelerators=plan.accelerator, count=plan.accelerator_count, precision=plan.model.precision,
        verdict=plan.verdict, weights_per_gpu=mem.weights if mem else 0, usable_per_gpu=mem.usable if mem else 0,
    )
