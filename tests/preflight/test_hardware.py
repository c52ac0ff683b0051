"""Hardware this machine lacks, read through the one narrow interface from recorded outputs of the real
tools (tests/preflight/recorded/SOURCES.md says where each comes from), and judged by the checks."""

from __future__ import annotations

import json
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nemodeploy.preflight import hardware, probe
from nemodeploy.preflight.checks import node as node_checks
from nemodeploy.preflight.checks import network as network_checks
from nemodeploy.preflight.context import GiB, Context
from nemodeploy.topology.loader import loads

RECORDED = Path(__file__).parent / "recorded"
A100 = (RECORDED / "telegraf-a100-sxm4-v12.xml").read_text()
ADA = (RECORDED / "telegraf-rtx-4000-sff-ada-v13.xml").read_text()
MI100 = (RECORDED / "telegraf-mi100_rocm602.json").read_text()
IB_SYSFS = str(RECORDED / "gpud-sys-class-infiniband-h100")
H800_TOPO = (RECORDED / "llm-action-h800-nvidia-smi-topo-matrix.txt").read_text()
XGMI_8 = (RECORDED / "amdsmi-changelog-topology-8gpu-xgmi.txt").read_text()


def test_nvidia_smi_v12_with_mig():
    found = hardware.parse_nvidia_smi(A100)
    assert (found.vendor, found.driver, found.runtime) == ("nvidia", "535.54.03", "12.2")
    [gpu] = found.devices
    assert gpu.name == "NVIDIA A100-SXM4-80GB"
    assert gpu.memory_total == 81920 * 2**20 and gpu.memory_free == 80999 * 2**20  # the GPU's, not its MIG slices'
    assert (gpu.persistence, gpu.ecc_enabled, gpu.ecc_uncorrectable) == (False, True, 0)
    assert gpu.retirement_pending is None  # N/A in the recording: unknown, not "fine"


def test_nvidia_smi_v13():
    [gpu] = hardware.parse_nvidia_smi(ADA).devices
    assert gpu.persistence is True and gpu.ecc_enabled is False and gpu.retirement_pending is False


def test_rocm_smi_json():
    found = hardware.parse_rocm_smi(MI100)
    assert found.vendor == "amd" and found.driver == "6.3.6"
    assert [d.index for d in found.devices] == [0, 1, 2, 3]
    assert all("MI100" in d.name and d.memory_total == 34342961152 for d in found.devices)
    assert found.devices[0].memory_free == 34342961152 - 6750208


def test_rdma_sysfs_of_an_h100_node():
    ports = hardware.rdma_ports(probe._rdma_sysfs(IB_SYSFS))
    assert len(ports) == 9 and all(p.state == "ACTIVE" for p in ports)
    assert {p.link_layer for p in ports if p.device != "mlx5_bond_0"} == {"InfiniBand"}
    assert next(p for p in ports if p.device == "mlx5_bond_0").link_layer == "Ethernet"


def test_nvidia_topo_matrix_of_an_h800_node():
    links = hardware.nvidia_links(H800_TOPO)
    assert len(links) == 8 * 7 and set(links.values()) == {"NV8"}  # every ordered GPU pair; NIC rows left out
    assert hardware.Accelerators("nvidia", None, None, links=links).pairs()[(0, 7)] == ("NV8",)


def test_amd_smi_link_type_table_of_an_8_gpu_xgmi_node():
    links = hardware.amd_smi_links(XGMI_8)
    assert len(links) == 8 * 7 and set(links.values()) == {"XGMI"}  # SELF cells left out; the NUMA BW table too


def test_rocm_smi_json_link_types():
    links = hardware.rocm_smi_links(MI100)
    assert links[(0, 3)] == links[(3, 0)] == "PCIE" and len(links) == 4 * 3


def _set_cell(table: str, row: str, column: int, kind: str, below: str = "") -> str:
    """The recorded table with one cell changed (column 0 is the row's label; the first such row below the
    line `below`), its separators kept."""
    lines = table.splitlines(keepends=True)
    top = next(i for i, line in enumerate(lines) if line.strip() == below) if below else 0
    at = next(i for i, line in enumerate(lines) if i > top and line.split() and line.split()[0] == row)
    parts = re.split(r"(\s+)", lines[at].lstrip())
    parts[2 * column] = kind
    lines[at] = lines[at][: len(lines[at]) - len(lines[at].lstrip())] + "".join(parts)
    return "".join(lines)


def _context(kind: str, count: int, tools: dict, rdma=(), nics: str = "[]") -> tuple[Context, object]:
    topology = loads(
        f"name: t\nnodes:\n  - name: n0\n    address: 10.0.0.1\n    accelerators: {{kind: {kind}, count: {count}}}\n"
        f"    nics: {nics}\nmodel: {{id: nemotron-h-tiny}}\n"
    )
    facts = {"tools": tools, "rdma": list(rdma), "route": {"dev": "ib0", "src": "10.0.0.1"}, "links": {"ib0": 4092}}
    return Context(topology, plan=None, facts={"n0": facts}), topology.nodes[0]


def test_accelerators_match_the_recorded_gpu_and_reject_another_kind():
    ctx, node = _context("a100-80gb", 1, {"nvidia_smi": A100})
    assert node_checks.accelerators(ctx, node).status == "ok"
    ctx, node = _context("h100-sxm", 1, {"nvidia_smi": A100})
    wrong = node_checks.accelerators(ctx, node)
    assert wrong.status == "fail" and "A100" in wrong.measured and "H100" in wrong.expected
    ctx, node = _context("a100-80gb", 4, {"nvidia_smi": A100})
    assert node_checks.accelerators(ctx, node).status == "fail"  # the recording has one GPU, the topology says 4


def test_missing_driver_is_a_failure_with_the_fix():
    ctx, node = _context("h100-sxm", 8, {})
    result = node_checks.accelerators(ctx, node)
    assert result.status == "fail" and "nvidia-smi" in result.measured and "driver" in result.remedy


def test_driver_too_old_for_the_architecture():
    ctx, node = _context("b200", 1, {"nvidia_smi": A100})  # CUDA 12.2 cannot run Blackwell (sm_100 needs 12.8)
    result = node_checks.driver(ctx, node)
    assert result.status == "fail" and "12.2" in result.measured and "12.8" in result.expected


def test_persistence_off_is_a_warning_with_the_command():
    ctx, node = _context("a100-80gb", 1, {"nvidia_smi": A100})
    result = node_checks.persistence(ctx, node)
    assert result.status == "warn" and "nvidia-smi -pm 1" in result.remedy


def test_amd_accelerators_through_rocm_smi():
    ctx, node = _context("mi300x", 4, {"rocm_smi": MI100})
    result = node_checks.accelerators(ctx, node)
    assert result.status == "fail" and "MI100" in result.measured  # an MI100 is not the MI300X the topology says


@pytest.mark.parametrize(("hca", "status"), [("mlx5_0", "ok"), ("mlx5_3", "fail"), ("mlx5_bond_0", "fail")])
def test_rdma_rails_against_the_recorded_node(hca, status):
    # mlx5_3 is absent from that node; the RoCE bond has no GID table in the recording (so no RoCE v2 GID index).
    ctx, node = _context("h100-sxm", 8, {}, probe._rdma_sysfs(IB_SYSFS),
                         nics=f"[{{name: ib0, mtu: 4092, rdma: true, hca: {hca}}}]")
    assert network_checks.rdma(ctx)[0].status == status


def test_shm_threshold_scales_with_accelerators():
    ctx, node = _context("h100-sxm", 8, {})
    ctx.facts["n0"]["shm_bytes"] = 4 * GiB
    result = node_checks.shm(ctx, node)
    assert result.status == "fail" and result.expected == ">= 8.0 GiB" and "remount" in result.remedy


def test_read_throughput_is_judged_only_on_a_big_enough_sample():
    ctx, node = _context("h100-sxm", 8, {})
    ctx.facts["n0"]["read_sample"] = {"path": "/m/a.safetensors", "bytes": 1 << 20, "seconds": 0.01}
    assert node_checks.read_throughput(ctx, node).status == "skip"
    ctx.facts["n0"]["read_sample"] = {"path": "/m/a.safetensors", "bytes": 256 << 20, "seconds": 2.0}  # 0.13 GB/s
    slow = node_checks.read_throughput(ctx, node)
    assert slow.status == "warn" and "0.13 GB/s" in slow.measured and "NVMe" in slow.remedy


def test_ecc_on_nvidia_recordings():
    ctx, node = _context("a100-80gb", 1, {"nvidia_smi": A100})
    assert node_checks.ecc(ctx, node).status == "ok"  # ECC on, 0 uncorrectable, retirement N/A (unknown)
    ctx, node = _context("a100-80gb", 1, {"nvidia_smi": ADA})
    off = node_checks.ecc(ctx, node)
    assert off.status == "fail" and off.measured == "ECC off on GPU [0]" and "nvidia-smi -r" in off.remedy


def _one_pcie_pair(table: str) -> str:
    table = _set_cell(table, "0000:22:00.0", 6, "PCIE", below="LINK TYPE TABLE:")  # GPU1's cell for GPU5
    return _set_cell(table, "0000:af:00.0", 2, "PCIE", below="LINK TYPE TABLE:")  # and GPU5's for GPU1


# The devices come from another recording than the links (nvidia-smi -q of an A100, rocm-smi of 4x MI100):
# the link check reads only the links.
@pytest.mark.parametrize(("kind", "tools", "links", "fault", "held", "flipped", "remedy"), [
    ("h100-sxm", {"nvidia_smi": A100}, {"nvidia_topo": H800_TOPO}, lambda t: _set_cell(t, "GPU3", 6, "SYS"),
     "NV# (NVLink) on all 28 pairs", "GPU3-GPU5:NV8/SYS", "nvidia-fabricmanager"),
    ("mi300x", {"rocm_smi": MI100}, {"amd_smi_topology": XGMI_8}, _one_pcie_pair,
     "XGMI on all 28 pairs", "GPU1-GPU5:PCIE", "amd-smi xgmi"),
])
def test_the_recorded_fabric_holds_and_one_changed_pair_flips_nvlink(kind, tools, links, fault, held, flipped, remedy):
    ctx, node = _context(kind, 8, {**tools, **links})
    result = node_checks.nvlink(ctx, node)
    assert result.status == "ok" and result.measured == held
    [(tool, table)] = links.items()
    ctx, node = _context(kind, 8, {**tools, tool: fault(table)})
    result = node_checks.nvlink(ctx, node)
    assert result.status == "warn" and result.measured == flipped and remedy in result.remedy


def test_without_amd_smi_the_links_come_from_rocm_smi_and_mi100s_without_a_bridge_are_flagged():
    ctx, node = _context("mi300x", 4, {"rocm_smi": MI100})
    result = node_checks.nvlink(ctx, node)
    assert result.status == "warn"
    assert result.measured == "GPU0-GPU1:PCIE, GPU0-GPU2:PCIE, GPU0-GPU3:PCIE, GPU1-GPU2:PCIE (+2 more)"


def test_no_link_types_is_a_warning_naming_the_tool():
    ctx, node = _context("mi300x", 8, {})
    result = node_checks.nvlink(ctx, node)
    assert result.status == "warn" and result.measured.startswith("amd-smi topology")


# No public recording of `amd-smi metric --ecc --json` or `amd-smi bad-pages --json` was found (recorded/SOURCES.md).
# These are WRITTEN BY HAND in the layout amd-smi prints them: ROCm/amdsmi amdsmi_cli/amdsmi_commands.py (metric's
# "ecc" dict, bad_pages' retired/pending/un_res values) and amdsmi_logger.py (a JSON list, one object per GPU).
def _amd_smi_ecc(uncorrectable: list) -> str:
    return json.dumps([{"gpu": i, "ecc": {"total_correctable_count": 0, "total_uncorrectable_count": count,
                                          "total_deferred_count": 0, "cache_correctable_count": 0,
                                          "cache_uncorrectable_count": 0}} for i, count in enumerate(uncorrectable)], indent=4)


def _amd_smi_bad_pages(gpus: int, pending_on: int | None = None) -> str:
    page = {"page_address": "0x5f2b1000", "page_size": 4096, "status": "PENDING"}
    return json.dumps([{"gpu": i, "retired": hardware.NO_BAD_PAGES, "pending": page if i == pending_on else hardware.NO_BAD_PAGES,
                        "un_res": hardware.NO_BAD_PAGES} for i in range(gpus)], indent=4)


def _amd_ecc_context(uncorrectable: list, pending_on: int | None = None):
    return _context("mi300x", 4, {"rocm_smi": MI100, "amd_smi_ecc": _amd_smi_ecc(uncorrectable),
                                  "amd_smi_bad_pages": _amd_smi_bad_pages(len(uncorrectable), pending_on)})


def test_amd_ras_counts_and_bad_pages_reach_the_devices():
    ctx, _ = _amd_ecc_context([0, 0, 3, "N/A"], pending_on=1)
    found = hardware.read_accelerators(ctx.facts["n0"]["tools"])
    assert [d.ecc_uncorrectable for d in found.devices] == [0, 0, 3, None]  # N/A stays unknown
    assert [d.retirement_pending for d in found.devices] == [False, True, False, False]
    wrapped = json.dumps({"gpu_data": json.loads(_amd_smi_ecc([0, 7]))})  # newer amd-smi releases wrap the list
    assert hardware.amd_smi_uncorrectable(wrapped) == {0: 0, 1: 7}
    assert hardware.amd_smi_pending_pages("ERROR: amdgpu not loaded") == {}  # not JSON: nothing read, no crash


def test_amd_ecc_healthy_passes():
    ctx, node = _amd_ecc_context([0, 0, 0, 0])
    result = node_checks.ecc(ctx, node)
    assert result.status == "ok" and result.measured == "0 uncorrectable, nothing pending"


@pytest.mark.parametrize(("uncorrectable", "pending_on", "measured"), [
    ([0, 0, 1, 0], None, "uncorrectable errors on GPU [2]"),
    ([0, 0, 0, 0], 3, "bad pages pending on GPU [3]"),
])
def test_amd_one_uncorrectable_error_or_one_pending_page_fails_ecc(uncorrectable, pending_on, measured):
    ctx, node = _amd_ecc_context(uncorrectable, pending_on)
    result = node_checks.ecc(ctx, node)
    assert result.status == "fail" and result.measured == measured
    assert "amd-smi bad-pages" in result.remedy and "reboot" in result.remedy and "RMA" in result.remedy
    others = [c(ctx, node).status for c in (node_checks.nvlink, node_checks.persistence, node_checks.driver)]
    assert "fail" not in others  # the fault flips ecc only


def test_amd_ecc_unread_without_amd_smi_is_skipped_with_the_reason():
    ctx, node = _context("mi300x", 4, {"rocm_smi": MI100})
    result = node_checks.ecc(ctx, node)
    assert result.status == "skip" and "amd-smi" in result.measured


def test_the_probe_runs_amd_smi_for_ras_and_links(tmp_path, monkeypatch):
    # A STAND-IN for amd-smi (no AMD GPU here): a script that prints the recorded table for `topology` and the
    # hand-written JSON above for `metric --ecc --json` / `bad-pages --json`, so the probe's own invocation runs.
    (tmp_path / "topology.txt").write_text(XGMI_8)
    (tmp_path / "metric.txt").write_text(_amd_smi_ecc([0] * 8))
    (tmp_path / "bad-pages.txt").write_text(_amd_smi_bad_pages(8, pending_on=6))
    script = tmp_path / "amd-smi"
    script.write_text(f'#!/bin/sh\ncase "$*" in\n  "topology") cat {tmp_path}/topology.txt;;\n'
                      f'  "metric --ecc --json") cat {tmp_path}/metric.txt;;\n'
                      f'  "bad-pages --json") cat {tmp_path}/bad-pages.txt;;\n  *) exit 2;;\nesac\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with ThreadPoolExecutor(max_workers=8) as pool:
        tools = probe._node_facts({"checkpoint_dir": str(tmp_path / "ckpt")}, pool)["tools"]
    assert tools["rocm_smi"] is None  # absent tools give None
    assert hardware.amd_smi_links(tools["amd_smi_topology"]) == hardware.amd_smi_links(XGMI_8)
    assert hardware.amd_smi_pending_pages(tools["amd_smi_bad_pages"])[6] is True
    assert set(hardware.amd_smi_uncorrectable(tools["amd_smi_ecc"]).values()) == {0}
