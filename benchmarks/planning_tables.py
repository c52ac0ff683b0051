"""The tables of docs/planning.md, printed from fresh plans (tests/plan/test_planning_doc.py checks the doc).

    python benchmarks/planning_tables.py
"""

from __future__ import annotations

from nemodeploy.models.accounting import weight_bytes
from nemodeploy.models.specs import resolve_model
from nemodeploy.plan.compiler import compile_plan
from nemodeploy.plan.types import human_bytes
from nemodeploy.topology.loader import load, profile_names


def weights_table() -> str:
    rows = ["| model | precision | backbone | MTP | checkpoint |", "| --- | --- | --- | --- | --- |"]
    for name in ("nemotron-3-ultra", "nemotron-3-super", "nemotron-3-nano"):
        config = resolve_model(name, None).config
        for precision in ("bf16", "fp8", "nvfp4"):
            w = weight_bytes(config, precision)
            rows.append(f"| {name} | {precision} | {human_bytes(w.total_bytes)} | {human_bytes(w.mtp_bytes)} | "
                        f"{human_bytes(w.total_bytes + w.mtp_bytes)} |")
    return "\n".join(rows)


def profiles_table() -> str:
    rows = ["| profile | verdict | layout (tp x pp x dp, ep) | weights / GPU | per user | in flight | total | TTFT |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in profile_names():
        if name == "local":  # sized from this machine's CPU: its figures differ from machine to machine
            continue
        plan = compile_plan(load(name), with_alternatives=False)
        p, e, mem = plan.parallel, plan.estimate, plan.memory
        layout = f"{p.tp_size} x {p.pp_size} x {p.dp_size}, {p.ep_size}" if p else "-"
        weights = human_bytes(mem.weights) if mem else "-"
        speed = (f"{e.decode_tokens_per_s_per_sequence:.1f} tok/s | {e.sequences_in_flight} | "
                 f"{e.decode_tokens_per_s_total:,.0f} tok/s | {e.ttft_s:.2f} s") if e else "- | - | - | -"
        rows.append(f"| {name} | {plan.verdict} | {layout} | {weights} | {speed} |")
    return "\n".join(rows)


def tables() -> list[str]:
    return [weights_table(), profiles_table()]


if __name__ == "__main__":
    print("\n\n".join(tables()))
