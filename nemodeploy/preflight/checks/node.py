"""Checks of one node against the topology and plan, from that node's facts alone."""

from __future__ import annotations

import re

from nemodeploy.preflight import hardware
from nemodeploy.preflight.context import GiB, Context
from nemodeploy.preflight.result import CheckResult, judge, skipped
from nemodeploy.topology.catalog import ACCELERATORS
from nemodeploy.topology.schema import Node

MIN_READ_SAMPLE = 64 * 2**20  # below this the open and the first block dominate: no rate worth judging
MEMORY_TOLERANCE = 0.06  # the driver reserves some memory: an H100 80GB reports 79.6 GiB
# The first CUDA release that compiles for each architecture (CUDA toolkit release notes: 11.0 sm_80,
# 11.8 sm_90, 12.8 sm_100, 13.0 sm_121 / DGX Spark), so the oldest a driver may support for it.
MIN_CUDA = {"ampere": (11, 0), "hopper": (11, 8), "blackwell": (12, 8), "grace-blackwell-gb10": (13, 0)}


def _gib(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value / GiB:.1f} GiB" if value >= GiB else f"{value / 2**20:.0f} MiB"


def _model_token(name: str) -> str | None:
    """The model part of a product name ("H100", "GB10", "MI300X")."""
    match = re.search(r"\b(G?[A-Z]{1,2}\d{2,4}[A-Z]?)\b", name)
    return match.group(1) if match else None


def _devices(ctx: Context, node: Node) -> hardware.Accelerators | None:
    return hardware.read_accelerators(ctx.facts[node.name]["tools"])


def accelerators(ctx: Context, node: Node) -> CheckResult:
    want = ACCELERATORS[node.accelerators.kind]
    name = "accelerators"
    if want.arch == "cpu":
        return skipped(node.name, name, "CPU node: no accelerator to check", "error")
    expected = f"{node.accelerators.count} x {want.name}, {_gib(want.memory_bytes)} each"
    found = _devices(ctx, node)
    tool, listing = ("rocm-smi", "rocm-smi --showproductname") if want.vendor == "amd" else ("nvidia-smi", "nvidia-smi -L")
    if found is None:
        return judge(node.name, name, False, f"{tool} is missing or failed", expected, "error",
                     f"install the {want.vendor.upper()} driver and check `{tool}` runs on {node.address}")
    token = _model_token(want.name)
    wrong = [d for d in found.devices if token and not re.search(rf"(?<![A-Z0-9]){token}(?![0-9])", d.name.upper())]
    small = [d for d in found.devices if d.memory_total is not None and d.memory_total < want.memory_bytes * (1 - MEMORY_TOLERANCE)]
    names = ", ".join(sorted({d.name for d in found.devices})) or "none"
    least = min((d.memory_total or 0 for d in found.devices), default=None)
    held = len(found.devices) >= node.accelerators.count and not wrong and not small
    return judge(node.name, name, held, f"{len(found.devices)} x {names}, {_gib(least)} min", expected, "error",
                 f"set nodes[].accelerators to what the node has ({listing}), or fix the node")


def driver(ctx: Context, node: Node) -> CheckResult:
    want = ACCELERATORS[node.accelerators.kind]
    found = _devices(ctx, node) if want.arch != "cpu" else None
    if found is None:
        return skipped(node.name, "driver", "no accelerator driver to check", "error")
    minimum = MIN_CUDA.get(want.arch)
    measured = f"driver {found.driver}, {'CUDA' if found.vendor == 'nvidia' else 'ROCm'} {found.runtime}"
    if minimum is None or found.vendor != "nvidia":
        return judge(node.name, "driver", found.driver is not None, measured, "a driver that answers", "error",
                     "install the vendor driver")
    version = tuple(int(p) for p in re.findall(r"\d+", found.runtime or "")[:2])
    return judge(node.name, "driver", bool(version) and version >= minimum, measured,
                 f"CUDA >= {minimum[0]}.{minimum[1]} ({want.arch})", "error",
                 f"install an NVIDIA driver that supports CUDA {minimum[0]}.{minimum[1]} or newer")


def persistence(ctx: Context, node: Node) -> CheckResult:
    found = _devices(ctx, node) if ACCELERATORS[node.accelerators.kind].vendor == "nvidia" else None
    if found is None or ACCELERATORS[node.accelerators.kind].unified_memory:
        return skipped(node.name, "persistence", "no discrete NVIDIA GPU")
    off = [d.index for d in found.devices if d.persistence is False]
    return judge(node.name, "persistence", not off, f"off on GPU {off}" if off else "on", "persistence mode on",
                 "warning", "sudo nvidia-smi -pm 1 (or enable nvidia-persistenced)")


ECC_REMEDY = {
    "nvidia": "drain the node and reset the GPU (nvidia-smi -r -i <gpu>); replace it if errors return",
    "amd": "drain the node; amd-smi bad-pages and amd-smi metric --ecc --ecc-blocks name the pages and blocks; "
           "reboot it (the driver retires pending pages when it loads); RMA a GPU whose uncorrectable errors return",
}


def ecc(ctx: Context, node: Node) -> CheckResult:
    """Uncorrectable memory errors and pages (rows) waiting to be retired: nvidia-smi -q, or amd-smi on AMD."""
    found = _devices(ctx, node) if ACCELERATORS[node.accelerators.kind].arch != "cpu" else None
    if found is None:
        return skipped(node.name, "ecc", "no accelerator tool output to read ECC from", "error")
    devices = found.devices
    if found.vendor == "amd" and all(d.ecc_uncorrectable is None and d.retirement_pending is None for d in devices):
        return skipped(node.name, "ecc", "amd-smi is missing or failed: RAS errors and bad pages unread "
                       "(rocm-smi's JSON carries neither)", "error")
    errors = [d.index for d in devices if (d.ecc_uncorrectable or 0) > 0]
    pending = [d.index for d in devices if d.retirement_pending]
    disabled = [d.index for d in devices if d.ecc_enabled is False]
    measured = ", ".join(filter(None, [
        f"uncorrectable errors on GPU {errors}" if errors else "",
        f"{'bad pages' if found.vendor == 'amd' else 'retirement'} pending on GPU {pending}" if pending else "",
        f"ECC off on GPU {disabled}" if disabled else "",
    ])) or "0 uncorrectable, nothing pending"
    expected = "0 uncorrectable, nothing pending" if found.vendor == "amd" else "ECC on, 0 uncorrectable, nothing pending"
    return judge(node.name, "ecc", not (errors or pending or disabled), measured, expected, "error", ECC_REMEDY[found.vendor])


# The catalog's intra-node link -> the link kind the vendor tool prints for a pair joined by it, and what to
# run when a pair is not. One check covers both fabrics (named `nvlink`, as it first was).
FABRICS = {
    "nvlink": ("NV", "NV# (NVLink)", "nvidia-smi nvlink -s; check the fabric manager (systemctl status nvidia-fabricmanager)"),
    "infinity-fabric": ("XGMI", "XGMI", "amd-smi xgmi --metric (per-link status); dmesg | grep -i hive (every GPU "
                        "joins one xGMI hive at driver load); reboot, and RMA a GPU whose links stay down"),
}


def nvlink(ctx: Context, node: Node) -> CheckResult:
    """Every GPU pair joined by the node's GPU fabric (NVLink, or AMD's xGMI / Infinity Fabric)."""
    want = ACCELERATORS[node.accelerators.kind]
    fabric = next((f for prefix, f in FABRICS.items() if want.intra_node_link.startswith(prefix)), None)
    if fabric is None or node.accelerators.count < 2:
        return skipped(node.name, "nvlink", "no NVLink or xGMI between accelerators in this topology")
    kind_prefix, kind_name, remedy = fabric
    expected = f"{kind_name} between every GPU pair"
    found = _devices(ctx, node)
    if found is None or not found.links:
        tool = "nvidia-smi topo -m" if want.vendor == "nvidia" else "amd-smi topology (or rocm-smi --showallinfo --json)"
        return judge(node.name, "nvlink", False, f"{tool} gave no link types", expected, "warning", remedy)
    pairs = found.pairs()
    slow = [f"GPU{a}-GPU{b}:{'/'.join(kinds)}" for (a, b), kinds in pairs.items()
            if not all(kind.startswith(kind_prefix) for kind in kinds)]
    more = f" (+{len(slow) - 4} more)" if len(slow) > 4 else ""
    return judge(node.name, "nvlink", not slow, ", ".join(slow[:4]) + more or f"{kind_name} on all {len(pairs)} pairs",
                 expected, "warning", remedy)


def memory(ctx: Context, node: Node) -> CheckResult:
    """The plan's per-accelerator memory against what is free now (MemAvailable on unified memory)."""
    plan = ctx.plan
    if plan is None or plan.memory is None:
        return skipped(node.name, "memory", "no feasible plan to compare against", "error")
    want = ACCELERATORS[node.accelerators.kind]
    # vLLM refuses to start unless `usable` is free; the embedded engine allocates only what it uses.
    need = plan.memory.usable if ctx.topology.engine.kind == "vllm" else plan.memory.usable - plan.memory.free
    facts = ctx.facts[node.name]
    if want.unified_memory:  # GB10, CPU: what CUDA reports there counts memory the OS cannot give back
        free = facts["memory"].get("MemAvailable", 0) // node.accelerators.count
        source = "MemAvailable / accelerators"
    else:
        found = _devices(ctx, node)
        frees = [d.memory_free for d in (found.devices if found else []) if d.memory_free is not None]
        if not frees:
            return skipped(node.name, "memory", "free device memory unknown (no accelerator tool output)", "error")
        free, source = min(frees), "least free accelerator"
    return judge(node.name, "memory", free >= need, f"{_gib(free)} free ({source})", f">= {_gib(need)} per accelerator (plan)",
                 "error", "stop what holds the memory (nvidia-smi / ps), or plan with a lower engine.memory_utilization")


def shm(ctx: Context, node: Node) -> CheckResult:
    size = ctx.facts[node.name]["shm_bytes"]
    need = ctx.thresholds.shm_bytes_per_accelerator * node.accelerators.count
    return judge(node.name, "shm", size is not None and size >= need, f"/dev/shm {_gib(size)}", f">= {_gib(need)}", "error",
                 f"mount -o remount,size={max(need // GiB, 1) * 4}G /dev/shm (and set it in /etc/fstab; containers: --shm-size)")


def ulimits(ctx: Context, node: Node) -> CheckResult:
    limits, t = ctx.facts[node.name]["ulimits"], ctx.thresholds
    rdma = any(nic.rdma for nic in node.nics)
    low = []
    if rdma and limits["memlock"] is not None:
        low.append(f"memlock {limits['memlock'] // 1024} KiB (RDMA needs unlimited)")
    if limits["nofile"] is not None and limits["nofile"] < t.nofile:
        low.append(f"nofile {limits['nofile']}")
    if limits["stack"] is not None and limits["stack"] < t.stack_bytes:
        low.append(f"stack {limits['stack'] // 1024} KiB")
    expected = f"{'memlock unlimited, ' if rdma else ''}nofile >= {t.nofile}, stack >= {t.stack_bytes // 1024} KiB"
    severity = "error" if rdma and limits["memlock"] is not None else "warning"
    return judge(node.name, "ulimits", not low, ", ".join(low) or "ok", expected, severity,
                 "set in /etc/security/limits.d/90-nemodeploy.conf: '* - memlock unlimited', '* - nofile 1048576' "
                 "(ansible/prepare.yml does), then log in again")


def disk(ctx: Context, node: Node) -> CheckResult:
    facts, plan = ctx.facts[node.name], ctx.plan
    if facts["read_sample"] is not None:
        return judge(node.name, "disk", True, f"checkpoint present ({facts['read_sample']['path']})", "", "error", "")
    if plan is None:
        return skipped(node.name, "disk", "no plan: checkpoint size unknown", "error")
    need, free = plan.model.weight_bytes, facts["disk"]["free"]
    return judge(node.name, "disk", free >= need, f"{_gib(free)} free on {facts['disk']['path']}",
                 f">= {_gib(need)} (checkpoint)", "error", f"free space under {facts['disk']['path']}, or set model.path to a larger disk")


def read_throughput(ctx: Context, node: Node) -> CheckResult:
    sample = ctx.facts[node.name]["read_sample"]
    if sample is None:
        return skipped(node.name, "read-throughput", "no checkpoint on the node yet to sample")
    if sample["bytes"] < MIN_READ_SAMPLE:
        return skipped(node.name, "read-throughput", f"checkpoint too small to time ({sample['bytes'] >> 20} MiB read)")
    rate = sample["bytes"] / sample["seconds"] / 1e9
    return judge(node.name, "read-throughput", rate >= ctx.thresholds.read_gb_s, f"{rate:.2f} GB/s ({sample['bytes'] >> 20} MiB read)",
                 f">= {ctx.thresholds.read_gb_s} GB/s", "warning",
                 "put the checkpoint on local NVMe (model.path), not a network share")


def hostname(ctx: Context, node: Node) -> CheckResult:
    facts = ctx.facts[node.name]
    addresses = facts["hostname_addresses"]
    usable = [a for a in addresses if not a.startswith("127.")]
    return judge(node.name, "hostname", bool(usable), f"{facts['hostname']} -> {', '.join(addresses) or 'unresolved'}",
                 f"resolves to a non-loopback address ({node.address})", "warning",
                 f"echo '{node.address} {facts['hostname']}' >> /etc/hosts (Gloo and some NCCL paths resolve it)")


def packages(ctx: Context, node: Node) -> CheckResult:
    versions = ctx.facts[node.name]["packages"]
    missing = [name for name, version in versions.items() if version is None]
    head = ctx.facts.get(ctx.head.name, {}).get("packages", {})
    pins = " ".join(f"'{n}=={head[n]}'" if head.get(n) else n for n in missing)
    return judge(node.name, "packages", not missing, f"missing: {', '.join(missing)}" if missing else f"{len(versions)} present",
                 ", ".join(versions), "error", f"pip install {pins} (same versions as the head)")


CHECKS = [accelerators, driver, persistence, ecc, nvlink, memory, shm, ulimits, disk, read_throughput, hostname, packages]
