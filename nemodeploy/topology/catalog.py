"""The hardware the planner knows: accelerators and the networks between nodes.

Every number sits beside the vendor page it comes from (`sources`). Compute figures
are *dense* tensor-core throughput: vendors headline 2:4-sparse numbers, which
are twice these. Where a vendor publishes only a system total (HGX board, NVL72
rack), the per-GPU figure is that total divided by the GPU count, and the source
says so. A number that no datasheet gives (a CPU's, a latency) is marked as an
assumption, with the reason for the value chosen.

Units: bytes, bytes per second, seconds, TFLOP/s (1e12 FLOP/s).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import psutil

GB = 10**9
TB = 10**12
GiB = 2**30
"""Memory capacities: vendors print "80GB" for what the device reports as 80 GiB-sized memory
(nvidia-smi shows 81,559 MiB for an H100 80GB, 143,771 MiB for an H200 141GB; torch sees about
79 GiB of the H100 after the driver's reservation). Capacities are therefore counted in GiB;
bandwidths and FLOP/s stay decimal, as datasheets mean them."""
GB10_CUDA_BYTES = int(121.69 * GiB)
"""What cudaMemGetInfo reports as total on a DGX Spark: the 128 GiB less what the OS keeps."""

_B200 = "NVIDIA DGX B200 datasheet, https://www.nvidia.com/en-us/data-center/dgx-b200/"
_HGX = "NVIDIA HGX platform specifications (HGX B200 / HGX B300, per 8 GPUs), https://www.nvidia.com/en-us/data-center/hgx/"
_GB200 = "NVIDIA GB200 NVL72 specifications (per 72 GPUs), https://www.nvidia.com/en-us/data-center/gb200-nvl72/"
_GB300 = "NVIDIA GB300 NVL72 specifications (per 72 GPUs), https://www.nvidia.com/en-us/data-center/gb300-nvl72/"
_DGXB300 = "NVIDIA DGX B300 datasheet, https://www.nvidia.com/en-us/data-center/dgx-b300/"
_NVLINK5 = "NVIDIA NVLink 5: 1.8 TB/s per GPU both directions, https://www.nvidia.com/en-us/data-center/nvlink/"
_H100 = "NVIDIA H100 Tensor Core GPU datasheet (SXM5), https://www.nvidia.com/en-us/data-center/h100/"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet (SXM), https://www.nvidia.com/en-us/data-center/h200/"
_A100 = "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM), https://www.nvidia.com/en-us/data-center/a100/"
_SPARK = "NVIDIA DGX Spark specifications, https://www.nvidia.com/en-us/products/workstations/dgx-spark/"
_MI300X = "AMD Instinct MI300X datasheet, https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html"
_MI355X = "AMD Instinct MI355X specifications, https://www.amd.com/en/products/accelerators/instinct/mi350/mi355x.html"
_CX7 = "NVIDIA ConnectX-7 datasheet (400 Gb/s per port), https://www.nvidia.com/en-us/networking/ethernet-adapters/"
_CX8 = "NVIDIA ConnectX-8 SuperNIC datasheet (800 Gb/s), https://www.nvidia.com/en-us/networking/products/ethernet/supernic/"
_DGXH100 = "NVIDIA DGX H100 datasheet: 8x ConnectX-7 400 Gb/s compute-fabric ports, https://www.nvidia.com/en-us/data-center/dgx-h100/"


@dataclass(frozen=True)
class Accelerator:
    """One accelerator (GPU, unified-memory superchip, or the host CPU)."""

    kind: str
    name: str
    vendor: str
    arch: str  # blackwell | hopper | ampere | cdna3 | cdna4 | grace-blackwell-gb10 | cpu
    memory_bytes: int
    memory_bandwidth_bytes_s: float
    dense_tflops: dict[str, float]  # fp32 / bf16 / fp8 / fp4 -> dense TFLOP/s; absent = no hardware support
    native_fp8: bool
    native_fp4: bool
    intra_node_link: str
    intra_node_bandwidth_bytes_s: float  # per GPU, one direction; 0 where a node holds one accelerator
    unified_memory: bool
    sources: dict[str, str] = field(repr=False)

    def supports(self, precision: str) -> bool:
        return precision in self.dense_tflops


@dataclass(frozen=True)
class Network:
    """A link between nodes. `bandwidth_bytes_s` is per node, per direction, over all its rails."""

    kind: str
    name: str
    bandwidth_bytes_s: float
    latency_s: float
    rdma: bool
    source: str


def _nvidia(kind, name, arch, memory, bandwidth, tflops, fp4, link_bw, link, sources, unified=False) -> Accelerator:
    return Accelerator(
        kind=kind,
        name=name,
        vendor="nvidia",
        arch=arch,
        memory_bytes=memory,
        memory_bandwidth_bytes_s=bandwidth,
        dense_tflops=tflops,
        native_fp8="fp8" in tflops,
        native_fp4=fp4,
        intra_node_link=link,
        intra_node_bandwidth_bytes_s=link_bw,
        unified_memory=unified,
        sources=sources,
    )


def _blackwell(kind, name, memory, bandwidth, tflops, memory_src, compute_src) -> Accelerator:
    return _nvidia(
        kind, name, "blackwell", memory, bandwidth, tflops, True, 900 * GB, "nvlink5",
        {
            "memory_bytes": memory_src,
            "memory_bandwidth_bytes_s": memory_src,
            "dense_tflops": compute_src + " (sparse figures halved)",
            "native_fp8": compute_src,
            "native_fp4": compute_src + " (NVFP4 tensor cores)",
            "intra_node_bandwidth_bytes_s": _NVLINK5 + " (halved: one direction)",
        },
    )


def _hopper(kind, name, memory, bandwidth, source) -> Accelerator:
    return _nvidia(
        kind, name, "hopper", memory, bandwidth, {"fp32": 67.0, "bf16": 989.5, "fp8": 1979.0}, False,
        450 * GB, "nvlink4",
        {
            "memory_bytes": source,
            "memory_bandwidth_bytes_s": source,
            "dense_tflops": source + " (sparse BF16 1,979 / FP8 3,958 halved)",
            "native_fp8": source + " (FP8 Transformer Engine; no FP4 tensor cores)",
            "native_fp4": source,
            "intra_node_bandwidth_bytes_s": source + " (NVLink 900 GB/s both directions, halved)",
        },
    )


def _cpu() -> Accelerator:
    """The machine this runs on, measured when the module loads.

    No datasheet describes an arbitrary host, so the throughput figures are
    deliberately conservative assumptions: a planner that overrates the CPU would
    promise latencies it cannot keep.
    """
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    # 16 fp32 FLOP per cycle per core (one 8-wide FMA) at 2 GHz: below any AVX2 server core.
    fp32 = cores * 16 * 2.0e9 / 1e12
    return Accelerator(
        kind="cpu",
        name=f"host CPU ({cores} cores)",
        vendor="host",
        arch="cpu",
        memory_bytes=psutil.virtual_memory().total,
        memory_bandwidth_bytes_s=20 * GB,
        dense_tflops={"fp32": fp32, "bf16": fp32},
        native_fp8=False,
        native_fp4=False,
        intra_node_link="none",
        intra_node_bandwidth_bytes_s=0.0,
        unified_memory=True,
        sources={
            "memory_bytes": "psutil.virtual_memory().total on this machine, read at import",
            "memory_bandwidth_bytes_s": "assumption: 20 GB/s, about one DDR4-3200 channel at achievable efficiency",
            "dense_tflops": "assumption: physical cores x 16 FLOP/cycle x 2 GHz (one 8-wide fp32 FMA); bf16 computed in fp32",
            "native_fp8": "assumption: no CPU matrix unit for FP8 is used",
            "native_fp4": "assumption: no CPU matrix unit for FP4 is used",
            "intra_node_bandwidth_bytes_s": "one host, no peer accelerators",
        },
    )


ACCELERATORS: dict[str, Accelerator] = {
    a.kind: a
    for a in (
        _blackwell(
            "gb200", "NVIDIA GB200 (Blackwell GPU in a GB200 NVL72)", 186 * GiB, 8 * TB,
            {"fp32": 80.0, "bf16": 2500.0, "fp8": 5000.0, "fp4": 10000.0},
            _GB200 + ": 13.4 TB HBM3e at 576 TB/s per 72 GPUs",
            _GB200 + ": FP4 1,440 PF / FP8 720 PF / BF16 360 PF sparse, FP32 5,760 TF per 72 GPUs",
        ),
        _blackwell(
            "b200", "NVIDIA B200 (HGX / DGX B200)", 180 * GiB, 8 * TB,
            {"fp32": 75.0, "bf16": 2250.0, "fp8": 4500.0, "fp4": 9000.0},
            _B200 + ": 1,440 GB HBM3e at 64 TB/s per 8 GPUs",
            _HGX + ": HGX B200 FP4 144 PF / FP8 72 PF / BF16 36 PF sparse, FP32 600 TF",
        ),
        _blackwell(
            "gb300", "NVIDIA GB300 (Blackwell Ultra GPU in a GB300 NVL72)", 288 * GiB, 8 * TB,
            {"fp32": 80.0, "bf16": 2500.0, "fp8": 5000.0, "fp4": 15000.0},
            _GB300 + ": 288 GB HBM3e per Blackwell Ultra GPU, 576 TB/s per 72 GPUs",
            _GB300 + ": FP4 1,080 PF dense / FP8 720 PF / BF16 360 PF sparse; FP32 80 TF per GPU from "
            "https://verda.com/blog/gb300-nvl72-architecture (per-GPU table)",
        ),
        _blackwell(
            "b300", "NVIDIA B300 (HGX / DGX B300, Blackwell Ultra)", 288 * GiB, 8 * TB,
            {"fp32": 75.0, "bf16": 2250.0, "fp8": 4500.0, "fp4": 13500.0},
            _DGXB300 + ": 2.3 TB HBM3e per 8 GPUs, 8 TB/s per GPU",
            _HGX + ": HGX B300 FP4 108 PF dense / FP8 72 PF / BF16 36 PF sparse, FP32 600 TF",
        ),
        _hopper("h100-sxm", "NVIDIA H100 SXM5 80GB", 80 * GiB, 3.35 * TB, _H100),
        _hopper("h200", "NVIDIA H200 SXM 141GB", 141 * GiB, 4.8 * TB, _H200),
        _nvidia(
            "a100-80gb", "NVIDIA A100 SXM4 80GB", "ampere", 80 * GiB, 2039 * GB,
            {"fp32": 19.5, "bf16": 312.0}, False, 300 * GB, "nvlink3",
            {
                "memory_bytes": _A100,
                "memory_bandwidth_bytes_s": _A100 + " (2,039 GB/s)",
                "dense_tflops": _A100 + " (BF16 312 dense; no FP8/FP4: quantized weights run as W4A16/W8A16)",
                "native_fp8": _A100,
                "native_fp4": _A100,
                "intra_node_bandwidth_bytes_s": _A100 + " (NVLink 600 GB/s both directions, halved)",
            },
        ),
        _nvidia(
            "gb10", "NVIDIA GB10 Grace Blackwell (DGX Spark)", "grace-blackwell-gb10", GB10_CUDA_BYTES, 273 * GB,
            {"bf16": 125.0, "fp8": 250.0, "fp4": 500.0}, True, 0.0, "none",
            {
                "memory_bytes": _SPARK + " (128 GB LPDDR5x unified system memory, shared with the OS); CUDA reports "
                "121.69 GiB of it: vllm recipes PR 632, vllm PR 40991",
                "memory_bandwidth_bytes_s": _SPARK + " (273 GB/s)",
                "dense_tflops": _SPARK + ": 'up to 1 PFLOP FP4' is with sparsity, so FP4 500 dense; FP8 and BF16 "
                "are not published: assumed at the Blackwell dense ratio FP4:FP8:BF16 = 4:2:1",
                "native_fp8": _SPARK + " (Blackwell 5th-gen tensor cores)",
                "native_fp4": _SPARK + " (NVFP4)",
                "intra_node_bandwidth_bytes_s": _SPARK + " (one GPU per system)",
            },
            unified=True,
        ),
        Accelerator(
            kind="mi300x",
            name="AMD Instinct MI300X",
            vendor="amd",
            arch="cdna3",
            memory_bytes=192 * GiB,
            memory_bandwidth_bytes_s=5.3 * TB,
            dense_tflops={"fp32": 163.4, "bf16": 1307.4, "fp8": 2614.9},
            native_fp8=True,
            native_fp4=False,
            intra_node_link="infinity-fabric",
            intra_node_bandwidth_bytes_s=448 * GB,
            unified_memory=False,
            sources={
                "memory_bytes": _MI300X + " (192 GB HBM3)",
                "memory_bandwidth_bytes_s": _MI300X + " (5.3 TB/s)",
                "dense_tflops": _MI300X + " (FP32 matrix 163.4, BF16 1,307.4, FP8 2,614.9 without sparsity)",
                "native_fp8": _MI300X + " (FP8 in the FNUZ variant)",
                "native_fp4": _MI300X + " (no FP4 matrix support)",
                "intra_node_bandwidth_bytes_s": _MI300X + " (7 Infinity Fabric links x 128 GB/s both directions, halved)",
            },
        ),
        Accelerator(
            kind="mi355x",
            name="AMD Instinct MI355X",
            vendor="amd",
            arch="cdna4",
            memory_bytes=288 * GiB,
            memory_bandwidth_bytes_s=8 * TB,
            dense_tflops={"fp32": 157.3, "bf16": 2516.6, "fp8": 5033.2, "fp4": 10066.3},
            native_fp8=True,
            native_fp4=True,
            intra_node_link="infinity-fabric",
            intra_node_bandwidth_bytes_s=537.6 * GB,
            unified_memory=False,
            sources={
                "memory_bytes": _MI355X + " (288 GB HBM3E)",
                "memory_bandwidth_bytes_s": _MI355X + " (8 TB/s)",
                "dense_tflops": _MI355X + " (FP32 157.3, BF16 2.5 PF, FP8 5.0 PF, MXFP4 10.1 PF without sparsity)",
                "native_fp8": _MI355X + " (OCP FP8)",
                "native_fp4": _MI355X + " (MXFP4: OCP microscaling, 32-value blocks with E8M0 scales; NVFP4 "
                "checkpoints need conversion)",
                "intra_node_bandwidth_bytes_s": _MI355X + " (7 Infinity Fabric links x 153.6 GB/s both directions, halved)",
            },
        ),
        _cpu(),
    )
}
ALIASES = {"h100": "h100-sxm"}
"""Other spellings of a kind. They are keys of ACCELERATORS too, so `kind in ACCELERATORS` accepts them."""
ACCELERATORS.update({alias: ACCELERATORS[kind] for alias, kind in ALIASES.items()})


def _network(kind, name, gbit_s, latency_s, rdma, source) -> Network:
    return Network(kind, name, gbit_s * 1e9 / 8, latency_s, rdma, source)


_RDMA_LATENCY = "latency: assumption, typical small-message RDMA round trip through one switch"
_TCP_LATENCY = "latency: assumption, typical kernel TCP small-message latency"

NETWORKS: dict[str, Network] = {
    n.kind: n
    for n in (
        _network("roce-200g", "RoCE v2, 200 Gb/s (DGX Spark ConnectX-7 QSFP)", 200, 5e-6, True,
                 _SPARK + " (ConnectX-7, 200 Gb/s); " + _RDMA_LATENCY),
        _network("roce-400g", "RoCE v2, one 400 Gb/s port per node", 400, 5e-6, True, _CX7 + "; " + _RDMA_LATENCY),
        _network("ib-ndr-400g", "InfiniBand NDR, one 400 Gb/s port per node", 400, 2e-6, True,
                 _CX7 + "; " + _RDMA_LATENCY),
        _network("ib-ndr-400g-x8", "InfiniBand NDR, 8 rails x 400 Gb/s per node (DGX H100/H200/B200)", 8 * 400, 2e-6,
                 True, _DGXH100 + "; " + _RDMA_LATENCY),
        _network("ib-xdr-800g", "InfiniBand XDR, one 800 Gb/s port per node", 800, 2e-6, True,
                 _CX8 + "; " + _RDMA_LATENCY),
        _network("ib-xdr-800g-x8", "InfiniBand XDR, 8 rails x 800 Gb/s per node (DGX B300)", 8 * 800, 2e-6, True,
                 _DGXB300 + " (8x ConnectX-8 800 Gb/s); " + _RDMA_LATENCY),
        _network("ethernet-100g", "Ethernet 100 Gb/s, TCP", 100, 20e-6, False,
                 "IEEE 802.3 100GBASE line rate; " + _TCP_LATENCY),
        _network("ethernet-25g", "Ethernet 25 Gb/s, TCP", 25, 30e-6, False,
                 "IEEE 802.3by 25GBASE line rate; " + _TCP_LATENCY),
        _network("loopback", "Loopback (processes on one host, test hosts)", 80, 10e-6, False,
                 "assumption: 10 GB/s, kernel loopback TCP on a modern core; " + _TCP_LATENCY),
        _network("nvlink-switch", "NVLink 5 switch fabric, GB200/GB300 NVL72 (node = compute tray of 4 GPUs)",
                 4 * 900 * 8, 1e-6, True,
                 _NVLINK5 + " (900 GB/s per GPU per direction x 4 GPUs per tray); latency: assumption"),
    )
}


def accelerator(kind: str) -> Accelerator:
    key = kind.lower()
    if key not in ACCELERATORS:
        raise KeyError(f"unknown accelerator {kind!r}; known: {', '.join(sorted(ACCELERATORS))}")
    return ACCELERATORS[key]


def network(kind: str) -> Network:
    key = kind.lower()
    if key not in NETWORKS:
        raise KeyError(f"unknown network {kind!r}; known: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[key]
