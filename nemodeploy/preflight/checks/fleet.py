"""Checks that compare nodes with each other: what must be identical everywhere, and the clocks.

The reference value is the one most nodes have (ties go to the head's), so the node that
differs is the one flagged, not every node.
"""

from __future__ import annotations

from collections import Counter

from nemodeploy.preflight import hardware
from nemodeploy.preflight.context import Context
from nemodeploy.preflight.result import CheckResult, judge, skipped


def _reference(values: dict[str, object], head: str) -> object:
    counts = Counter(v for v in values.values() if v is not None)
    if not counts:
        return None
    best = max(counts.values())
    tied = [v for v, c in counts.items() if c == best]
    return values.get(head) if values.get(head) in tied else tied[0]


def _software(ctx: Context, name: str) -> dict[str, str | None]:
    facts = ctx.facts[name]
    found = hardware.read_accelerators(facts["tools"])
    return {
        "python": facts["python"],
        **{pkg: version for pkg, version in facts["packages"].items()},
        **({"driver": found.driver, "cuda/rocm": found.runtime} if found else {}),
    }


def versions(ctx: Context) -> list[CheckResult]:
    """Python, the packages, driver and CUDA/ROCm: equal on every node (absent packages are `packages`' job)."""
    table = {node.name: _software(ctx, node.name) for node in ctx.nodes}
    keys = sorted({k for row in table.values() for k in row})
    reference = {k: _reference({n: row.get(k) for n, row in table.items()}, ctx.head.name) for k in keys}
    expected = ", ".join(f"{k} {reference[k]}" for k in keys if reference[k] is not None)
    out = []
    for node in ctx.nodes:
        row = table[node.name]
        differ = [f"{k} {row[k]} (others {reference[k]})" for k in keys if row.get(k) is not None and row[k] != reference[k]]
        pins = " ".join(f"'{k}=={reference[k]}'" for k in keys if row.get(k) not in (None, reference[k]) and k not in ("python", "driver", "cuda/rocm"))
        out.append(judge(node.name, "versions", not differ, "; ".join(differ) or "same as the other nodes", expected, "error",
                         f"pip install {pins}" if pins else "install the same Python / driver as the other nodes (ansible/prepare.yml)"))
    return out


def nccl(ctx: Context) -> list[CheckResult]:
    """The NCCL library by content hash: two builds with one version string can still disagree on the wire."""
    hashes = {n.name: tuple(sorted(lib["sha256"] for lib in ctx.facts[n.name]["nccl"])) or None for n in ctx.nodes}
    if not any(hashes.values()):
        return [skipped(n.name, "nccl", "no libnccl on any node (CPU nodes, or NCCL not installed)", "error") for n in ctx.nodes]
    reference = _reference(hashes, ctx.head.name)
    out = []
    for node in ctx.nodes:
        mine = hashes[node.name]
        libs = ", ".join(f"{lib['path']} sha256:{lib['sha256'][:12]}" for lib in ctx.facts[node.name]["nccl"]) or "none found"
        out.append(judge(node.name, "nccl", mine == reference, libs, "sha256:" + ",".join(h[:12] for h in reference), "error",
                         "install the same NCCL build on every node (the nvidia-nccl-cu* wheel pinned by torch/vLLM)"))
    return out


def clock(ctx: Context) -> list[CheckResult]:
    """Offset from the head's clock, measured over TCP (half the round trip bounds the error)."""
    limit = ctx.thresholds.clock_skew_s
    out = []
    for node in ctx.nodes:
        if node.name == ctx.head.name:
            out.append(judge(node.name, "clock", True, "the reference clock", "", "warning", ""))
            continue
        offsets = [p["clock_offset_s"] for p in ctx.net.get(node.name, {}).get("peers", {}).get(ctx.head.name, {}).get("ports", {}).values()
                   if p.get("clock_offset_s") is not None]
        if not offsets:
            out.append(skipped(node.name, "clock", "the head did not answer: no clock sample"))
            continue
        offset = offsets[0]
        out.append(judge(node.name, "clock", abs(offset) <= limit, f"{offset * 1000:+.1f} ms from {ctx.head.name}",
                         f"within {limit * 1000:.0f} ms", "warning", "enable time sync: timedatectl set-ntp true (chrony)"))
    return out


CHECKS = [versions, nccl, clock]
