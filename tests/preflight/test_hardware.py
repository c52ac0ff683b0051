"""Hardware this machine lacks, read through the one narrow interface from recorded outputs of the real
tools (tests/preflight/recorded/SOURCES.md says where each comes from), and judged by the checks."""

from __future__ import annotations

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


def test_nvidia_topo_matrix():
    # Written by hand in the layout `nvidia-smi topo -m` prints (GPU rows, NIC and affinity columns):
    # no public recording of an NVLink node's matrix was found (recorded/SOURCES.md).
    text = ("\tGPU0\tGPU1\tGPU2\tNIC0\tCPU Affinity\tNUMA Affinity\n"
            "GPU0\t X \tNV18\tSYS\tPXB\t0-55\t0\n"
            "GPU1\tNV18\t X \tNV18\tSYS\t0-55\t0\n"
            "GPU2\tSYS\tNV18\t X \tSYS\t56-111\t1\n")
    links = hardware.nvidia_links(text)
    assert links[("GPU0", "GPU1")] == "NV18" and links[("GPU0", "GPU2")] == "SYS" and ("GPU0", "NIC0") not in links


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
