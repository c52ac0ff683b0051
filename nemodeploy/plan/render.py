"""The human view of a plan: verdict, layout over nodes, a stacked memory bar, capacity, estimate."""

from __future__ import annotations

from collections import defaultdict

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from nemodeploy.plan.types import Memory, Plan, human_bytes

VERDICT_STYLE = {"fits": "bold green", "tight": "bold yellow", "infeasible": "bold red"}
BAR_WIDTH = 64




def _params(n: int) -> str:
    return f"{n / 1e9:,.1f} B" if n >= 1e9 else f"{n / 1e6:,.2f} M"


def memory_bar(mem: Memory) -> Group:
    parts = [
        ("weights", mem.weights, "blue"),
        ("activations", mem.activations, "magenta"),
        ("cuda graphs", mem.cuda_graphs, "cyan"),
        ("KV cache", mem.kv_cache, "green"),
        ("Mamba state", mem.mamba_state, "yellow"),
        ("Mamba checkpoints", mem.mamba_checkpoints, "bright_yellow"),
        ("free", max(mem.free, 0), "grey50"),
        ("reserve", mem.runtime_reserve, "grey23"),
    ]
    scale = BAR_WIDTH / max(mem.capacity, sum(size for _, size, _ in parts), 1)
    bar, legend = Text(), Text()
    for label, size, style in parts:
        width = round(size * scale)
        if size and width == 0:
            width = 1
        bar.append("█" * width, style=style)
        if size:
            legend.append("■ ", style=style).append(f"{label} {human_bytes(size)}  ")
    return Group(bar, legend)


def _cost_lines(plan: Plan) -> list:
    c = plan.cost
    grid = Table.grid(padding=(0, 2))
    grid.add_row("per million tokens", f"${c.output_dollars_per_mtok:,.2f} output, "
                 f"${c.input_dollars_per_mtok:,.2f} input at {c.utilization:.0%} of the hour busy "
                 f"(${c.dollars_per_hour:,.2f}/h: {c.basis})")
    grid.add_row(f"against {c.api}",
                 f"${c.api_output_dollars_per_mtok:.2f} output, ${c.api_input_dollars_per_mtok:.2f} input")
    if c.capital_dollars:
        months = f"{c.break_even_months:,.1f} months" if c.break_even_months is not None else "never"
        grid.add_row("break-even", f"${c.capital_dollars:,.0f} of hardware pays for itself against the API in {months}")
    grid.add_row("rank", f"{c.rank} of {len(c.ranked_against)} priced profiles by output $/Mtok "
                 f"({', '.join(c.ranked_against)})")
    return [Text("\ncost", style="bold"), grid]


def _layout_table(plan: Plan) -> Table:
    table = Table(box=None, show_header=True, header_style="bold")
    table.add_column("node")
    table.add_column("address")
    table.add_column("devices -> rank (tp, pp, dp, ep)")
    by_node: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in plan.ranks:
        by_node[(r.node, r.address)].append(f"{r.device}:{r.rank}({r.tp_rank},{r.pp_rank},{r.dp_rank},{r.ep_rank})")
    for (node, address), cells in by_node.items():
        table.add_row(node, address, " ".join(cells))
    return table


def render(plan: Plan, console: Console) -> None:
    title = Text.assemble(("plan ", "bold"), (plan.topology, "bold cyan"), "  ",
                          (plan.verdict.upper(), VERDICT_STYLE[plan.verdict]))
    m = plan.model
    head = Table.grid(padding=(0, 2))
    head.add_row("model", f"{m.name} ({m.model_type}): {_params(m.total_params)} total, {_params(m.active_params)} active"
                 + (f", MTP {_params(m.mtp_params)} loaded" if m.mtp_loaded else ""))
    head.add_row("hardware", f"{plan.accelerator_count} x {plan.accelerator} in {plan.node_count} node(s), engine {plan.engine}")
    head.add_row("precision", f"weights {plan.precision.weights} -> {plan.precision.compute}; KV {plan.precision.kv_cache_dtype}; "
                 f"Mamba state {plan.precision.mamba_ssm_dtype}; {human_bytes(m.weight_bytes)} of weights")
    head.add_row("verdict", Text(plan.reason, style=VERDICT_STYLE[plan.verdict]))
    body: list = [head]
    if plan.parallel:
        p = plan.parallel
        body.append(Text(f"\nparallel: tp {p.tp_size} x pp {p.pp_size} x dp {p.dp_size}, ep {p.ep_size} "
                         f"({p.experts_per_rank} experts per rank, {p.kv_heads_per_rank} KV head(s) per rank, "
                         f"{p.mamba_heads_per_rank} Mamba heads / {p.mamba_groups_per_rank} group(s) per rank)", style="bold"))
        body.append(_layout_table(plan))
    if plan.memory:
        body.append(Text("\nmemory per GPU (heaviest stage) of " + human_bytes(plan.memory.capacity), style="bold"))
        body.append(memory_bar(plan.memory))
    if plan.capacity and plan.cache:
        c, k = plan.capacity, plan.cache
        cap = Table.grid(padding=(0, 2))
        cap.add_row("at the target context", f"{c.sequences_at_target_context} sequences of {c.target_context:,} tokens")
        cap.add_row("at the target concurrency", f"{c.context_at_target_concurrency:,} tokens for each of {c.target_concurrency}")
        cap.add_row("engine cache", f"{k.num_kv_blocks:,} KV blocks of {k.block_size}, {k.num_mamba_slots} Mamba slots, "
                    f"max {k.max_num_seqs} sequences of {k.max_model_len:,} tokens per replica")
        if k.prefix_caching:
            checkpoints = (f": {k.num_mamba_checkpoints} Mamba checkpoints, one every {k.mamba_checkpoint_interval} "
                           "tokens" if k.num_mamba_checkpoints else "")
            cap.add_row("prefix caching", "on" + checkpoints)
        body += [Text("\ncapacity", style="bold"), cap]
    if plan.estimate:
        e = plan.estimate
        est = Table.grid(padding=(0, 2))
        est.add_row("decode", f"{e.decode_tokens_per_s_per_sequence:,.1f} tok/s per user, "
                    f"{e.decode_tokens_per_s_total:,.0f} tok/s for {e.sequences_in_flight} user(s) in flight, "
                    f"batch {e.batch_per_replica} per replica at context {e.decode_context:,} "
                    f"({e.decode_bound}-bound, {e.decode_step_ms:.2f} ms per step)")
        est.add_row("prefill", f"{e.prefill_tokens_per_s_per_replica:,.0f} tok/s per replica "
                    f"({e.prefill_bound}-bound); time to first token {e.ttft_s:.2f} s")
        est.add_row("generated", f"{e.generated_tokens_per_s_total:,.0f} tok/s for the deployment, time to first token "
                    f"included; measured / estimate was {e.error_band[0]:.2f}-{e.error_band[1]:.2f} over the "
                    "calibration anchors")
        body += [Text("\nestimate (calibrated)", style="bold"), est]
        body += [Text("  assumes: " + a, style="dim") for a in e.assumptions]
    if plan.cost:
        body += _cost_lines(plan)
    if plan.warnings:
        body.append(Text("\nwarnings", style="bold yellow"))
        body += [Text(f"  - {w}", style="yellow") for w in plan.warnings]
    if plan.alternatives:
        body.append(Text("\nnearest plans that would serve", style="bold"))
        for alt in plan.alternatives:
            body.append(Text(f"  - {alt.change}: {alt.verdict}, {human_bytes(alt.weights_per_gpu)} of weights on "
                             f"{human_bytes(alt.usable_per_gpu)} usable per GPU"))
    console.print(Panel(Group(*body), title=title, title_align="left"))
