"""The one narrow interface to hardware this machine lacks: the vendor tools' own output, parsed.

The probe returns the tools' raw text (`nvidia-smi -q -x`, `nvidia-smi topo -m`, `rocm-smi
--showallinfo --json`, `amd-smi topology`, `amd-smi metric --ecc --json`, `amd-smi bad-pages --json`)
and the RDMA sysfs tree; this module turns it into plain typed data for the checks. Each parser is
tested against recorded outputs of the real tools where one was found (tests/preflight/recorded/,
with their sources), else against the format the tool's own source prints (the tests say which).
Anything a tool reports as N/A stays None: unknown, never guessed.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace

MiB = 2**20
NO_BAD_PAGES = "No bad pages found."  # amd-smi bad-pages, amdsmi_cli/amdsmi_commands.py


@dataclass(frozen=True)
class Device:
    """One accelerator as its vendor tool reports it."""

    index: int
    name: str
    memory_total: int | None
    memory_free: int | None
    persistence: bool | None = None
    ecc_enabled: bool | None = None
    ecc_uncorrectable: int | None = None  # NVIDIA: volatile (since the last driver load); AMD: amd-smi's total
    retirement_pending: bool | None = None  # pages (AMD: bad pages) or rows waiting to be retired at a GPU reset


@dataclass(frozen=True)
class Accelerators:
    vendor: str  # nvidia | amd
    driver: str | None
    runtime: str | None  # CUDA or ROCm version the driver supports
    devices: list[Device] = field(default_factory=list)
    # (i, j), i != j -> the link kind the vendor tool prints in row i, column j: NV# (NVLink), PIX, PXB,
    # PHB, NODE, SYS (PCIe paths) from `nvidia-smi topo -m`; XGMI or PCIE from amd-smi / rocm-smi.
    links: dict[tuple[int, int], str] = field(default_factory=dict)

    def pairs(self) -> dict[tuple[int, int], tuple[str, ...]]:
        """Each GPU pair (i < j) with the link kinds its two cells print (one kind when they agree)."""
        out: dict[tuple[int, int], set[str]] = {}
        for (a, b), kind in self.links.items():
            out.setdefault((min(a, b), max(a, b)), set()).add(kind)
        return {pair: tuple(sorted(kinds)) for pair, kinds in sorted(out.items())}


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


def nvidia_links(topo_text: str) -> dict[tuple[int, int], str]:
    """`nvidia-smi topo -m`: the link kind (NV#, PIX, PXB, PHB, NODE, SYS) between each pair of GPUs.

    Rows and columns are named GPU<i>; NIC rows and columns and the affinity columns are skipped."""
    lines = [line for line in topo_text.splitlines() if line.strip()]
    if not lines:
        return {}
    header = [int(h[3:]) for h in lines[0].split() if re.fullmatch(r"GPU\d+", h)]
    out = {}
    for line in lines[1:]:
        cells = line.split()
        if not cells or not re.fullmatch(r"GPU\d+", cells[0]):
            continue
        row = int(cells[0][3:])
        for other, kind in zip(header, cells[1 : 1 + len(header)]):
            if other != row:
                out[(row, other)] = kind
    return out


def amd_smi_links(topology_text: str) -> dict[tuple[int, int], str]:
    """The LINK TYPE TABLE of `amd-smi topology` (XGMI, PCIE, SELF), rows and columns named by PCI bus id.

    The text table is read rather than `--json`, whose layout changed in ROCm 6.1.1 (amd-smi's
    changelog); the table has kept its layout since ROCm 6.0 and is what public recordings show.
    amd-smi numbers GPUs in bus-id order (changelog, ROCm 6.0.0), the order of the table's columns."""
    lines = topology_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "LINK TYPE TABLE:"), None)
    if start is None:
        return {}
    rows = [line.split() for line in lines[start + 1 :]]
    while rows and not rows[0]:
        rows.pop(0)
    header = rows[0] if rows else []
    index = {bdf: i for i, bdf in enumerate(header)}
    out = {}
    for cells in rows[1:]:
        if not cells or cells[0] not in index:
            break  # a blank line or the next table
        row = index[cells[0]]
        for bdf, kind in zip(header, cells[1:]):
            if index[bdf] != row:
                out[(row, index[bdf])] = kind
    return out


def rocm_smi_links(json_text: str) -> dict[tuple[int, int], str]:
    """`rocm-smi --showallinfo --json` carries the link types too, one "system" key per pair, i < j only
    (XGMI, PCIE, or the literal "XXXX" rocm-smi prints when it cannot read one: rocm_smi.py's
    showTypeTopology and formatMatrixToJSON)."""
    system = json.loads(json_text).get("system", {})
    out = {}
    for key, kind in system.items():
        match = re.fullmatch(r"\(Topology\) Link type between DRM devices (\d+) and (\d+)", key)
        if match:
            a, b = int(match.group(1)), int(match.group(2))
            out[(a, b)] = out[(b, a)] = kind
    return out


def _amd_smi_gpus(json_text: str | None) -> list[dict]:
    """amd-smi's --json output: a list with one object per GPU (`{"gpu": <index>, ...}`); newer releases
    wrap the list as {"gpu_data": [...]}. Anything else (an error message) reads as nothing."""
    try:
        data = json.loads(json_text or "null")
    except ValueError:
        return []
    gpus = data.get("gpu_data", []) if isinstance(data, dict) else data if isinstance(data, list) else []
    return [g for g in gpus if isinstance(g, dict) and isinstance(g.get("gpu"), int)]


def amd_smi_uncorrectable(json_text: str | None) -> dict[int, int | None]:
    """`amd-smi metric --ecc --json`: ecc.total_uncorrectable_count per GPU (None where amd-smi says N/A)."""
    out = {}
    for gpu in _amd_smi_gpus(json_text):
        count = (gpu.get("ecc") or {}).get("total_uncorrectable_count")
        out[gpu["gpu"]] = count if isinstance(count, int) else None
    return out


def amd_smi_pending_pages(json_text: str | None) -> dict[int, bool | None]:
    """`amd-smi bad-pages --json`: whether a GPU has bad pages pending retirement.

    amd-smi prints "No bad pages found." when there are none, "N/A" when it cannot read them, and one
    {page_address, page_size, status} object, or a list of them, when there are some."""
    out = {}
    for gpu in _amd_smi_gpus(json_text):
        pending = gpu.get("pending")
        if isinstance(pending, (dict, list)):
            out[gpu["gpu"]] = bool(pending)
        else:
            out[gpu["gpu"]] = False if pending == NO_BAD_PAGES else None
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
        return replace(parse_nvidia_smi(tools["nvidia_smi"]), links=nvidia_links(tools.get("nvidia_topo") or ""))
    if tools.get("rocm_smi"):
        return _with_amd_smi(parse_rocm_smi(tools["rocm_smi"]), tools)
    return None


def _with_amd_smi(found: Accelerators, tools: dict) -> Accelerators:
    """rocm-smi's devices with what amd-smi adds: RAS error counts, pending bad pages, link types.

    Both tools number GPUs in PCI bus-id order (amd-smi's changelog, ROCm 6.0.0), so indexes match."""
    uncorrectable = amd_smi_uncorrectable(tools.get("amd_smi_ecc"))
    pending = amd_smi_pending_pages(tools.get("amd_smi_bad_pages"))
    devices = [replace(d, ecc_uncorrectable=uncorrectable.get(d.index), retirement_pending=pending.get(d.index))
               for d in found.devices]
    links = amd_smi_links(tools.get("amd_smi_topology") or "") or rocm_smi_links(tools["rocm_smi"])
    return replace(found, devices=devices, links=links)
