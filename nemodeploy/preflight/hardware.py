"""The one narrow interface to hardware this machine lacks: the vendor tools' own output, parsed.

The probe returns the tools' raw text (`nvidia-smi -q -x`, `rocm-smi --showallinfo --json`,
`nvidia-smi topo -m`) and the RDMA sysfs tree; this module turns it into plain typed data for the
checks. Each parser is tested against recorded outputs of the real tools (tests/preflight/recorded/,
with their sources). Anything a tool reports as N/A stays None: unknown, never guessed.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

MiB = 2**20


@dataclass(frozen=True)
class Device:
    """One accelerator as its vendor tool reports it."""

    index: int
    name: str
    memory_total: int | None
    memory_free: int | None
    persistence: bool | None = None
    ecc_enabled: bool | None = None
    ecc_uncorrectable: int | None = None  # volatile (since the last driver load)
    retirement_pending: bool | None = None  # pages retired or rows remapped, waiting for a GPU reset


@dataclass(frozen=True)
class Accelerators:
    vendor: str  # nvidia | amd
    driver: str | None
    runtime: str | None  # CUDA or ROCm version the driver supports
    devices: list[Device] = field(default_factory=list)


def _mib(text: str | None) -> int | None:
    match = re.match(r"\s*(\d+)\s*MiB", text or "")
    return int(match.group(1)) * MiB if match else None


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _flag(text: str | None, yes: str) -> bool | None:
    if not text or text.strip() == "N/A":
        return None
    return text.strip() == yes


def parse_nvidia_smi(xml_text: str) -> Accelerators:
    """`nvidia-smi -q -x` (DTD v12 and v13)."""
    root = ET.fromstring(xml_text)
    devices = []
    for index, gpu in enumerate(root.findall("gpu")):
        volatile = [_int(e.text) for e in gpu.findall("ecc_errors/volatile/*") if "uncorrectable" in e.tag]
        known = [v for v in volatile if v is not None]
        pending = [
            _flag(gpu.findtext("retired_pages/pending_retirement"), "Yes"),
            _flag(gpu.findtext("remapped_rows/remapped_row_pending"), "Yes"),
        ]
        devices.append(
            Device(
                index=index,  # nvidia-smi's order, the one its -i and CUDA_VISIBLE_DEVICES use by default
                name=(gpu.findtext("product_name") or "").strip(),
                memory_total=_mib(gpu.findtext("fb_memory_usage/total")),
                memory_free=_mib(gpu.findtext("fb_memory_usage/free")),
                persistence=_flag(gpu.findtext("persistence_mode"), "Enabled"),
                ecc_enabled=_flag(gpu.findtext("ecc_mode/current_ecc"), "Enabled"),
                ecc_uncorrectable=sum(known) if known else None,
                retirement_pending=any(p for p in pending if p is not None) if any(p is not None for p in pending) else None,
            )
        )
    return Accelerators("nvidia", root.findtext("driver_version"), root.findtext("cuda_version"), devices)


def parse_rocm_smi(json_text: str) -> Accelerators:
    """`rocm-smi --showallinfo --json`: one object per card plus "system"."""
    data = json.loads(json_text)
    devices = []
    for key in sorted((k for k in data if re.fullmatch(r"card\d+", k)), key=lambda k: int(k[4:])):
        card = data[key]
        total = _int(card.get("VRAM Total Memory (B)"))
        used = _int(card.get("VRAM Total Used Memory (B)"))
        devices.append(
            Device(
                index=int(key[4:]),
                name=card.get("Card series") or card.get("Card model") or key,
                memory_total=total,
                memory_free=total - used if total is not None and used is not None else None,
            )
        )
    system = data.get("system", {})
    return Accelerators("amd", system.get("Driver version"), system.get("ROCm version"), devices)


def nvidia_links(topo_text: str) -> dict[tuple[str, str], str]:
    """`nvidia-smi topo -m`: the link kind (X, NV#, PIX, PXB, PHB, NODE, SYS) between each pair of GPUs."""
    lines = [line for line in topo_text.splitlines() if line.strip()]
    if not lines:
        return {}
    header = [h for h in lines[0].split() if re.fullmatch(r"GPU\d+", h)]
    out = {}
    for line in lines[1:]:
        cells = line.split()
        if not cells or not re.fullmatch(r"GPU\d+", cells[0]):
            continue
        for other, kind in zip(header, cells[1 : 1 + len(header)]):
            if other != cells[0]:
                out[(cells[0], other)] = kind
    return out


@dataclass(frozen=True)
class RdmaPort:
    device: str
    port: int
    state: str  # ACTIVE, DOWN, ...
    link_layer: str  # InfiniBand | Ethernet (RoCE)
    netdevs: tuple[str, ...]
    roce_v2_gid_index: int | None  # the GID index NCCL_IB_GID_INDEX should name on RoCE


def rdma_ports(sysfs: list[dict]) -> list[RdmaPort]:
    """The probe's reading of /sys/class/infiniband: one entry per device port."""
    out = []
    for dev in sysfs:
        for port in dev["ports"]:
            v2 = sorted(int(i) for i, g in port["gids"].items() if "v2" in (g["type"] or "").lower())
            ipv4 = [i for i in v2 if port["gids"][str(i)]["gid"].startswith("0000:0000:0000:0000:0000:ffff:")]
            out.append(
                RdmaPort(
                    device=dev["name"],
                    port=port["port"],
                    state=(port["state"] or "").split(":")[-1].strip(),
                    link_layer=port["link_layer"] or "",
                    netdevs=tuple(dev["netdevs"]),
                    roce_v2_gid_index=(ipv4 or v2 or [None])[0],
                )
            )
    return out


def read_accelerators(tools: dict) -> Accelerators | None:
    """What the node's vendor tools say, or None when none answered (no driver, or a CPU node)."""
    if tools.get("nvidia_smi"):
        return parse_nvidia_smi(tools["nvidia_smi"])
    if tools.get("rocm_smi"):
        return parse_rocm_smi(tools["rocm_smi"])
    return None
