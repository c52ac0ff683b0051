"""Which arithmetic a checkpoint precision runs with on a given accelerator.

NVFP4 runs natively on FP4 tensor cores (Blackwell, GB10); on Hopper and Ampere
the FP4 weights are dequantised to BF16 inside the GEMM (W4A16): the memory
saving stays, the FLOPs are BF16. CDNA3 (MI300X) has no FP4 path at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from nemodeploy.topology.catalog import Accelerator

WEIGHT_ONLY_FP4_ARCHS = {"hopper", "ampere", "cpu"}
WEIGHT_ONLY_FP8_ARCHS = {"ampere", "cpu"}


@dataclass(frozen=True)
class ComputePath:
    weights: str
    compute: str  # human description
    flops_precision: str  # key into Accelerator.dense_tflops used for the estimate
    supported: bool
    reason: str = ""


def compute_path(precision: str, accel: Accelerator) -> ComputePath:
    if precision == "fp32":
        return ComputePath("fp32", "fp32", "fp32" if "fp32" in accel.dense_tflops else "bf16", True)
    if precision == "bf16":
        if "bf16" not in accel.dense_tflops:
            return ComputePath("bf16", "bf16", "bf16", False, f"{accel.name} has no BF16 arithmetic")
        return ComputePath("bf16", "bf16", "bf16", True)
    if precision == "fp8":
        if accel.native_fp8:
            return ComputePath("fp8", "fp8 (native FP8 tensor cores)", "fp8", True)
        if accel.arch in WEIGHT_ONLY_FP8_ARCHS:
            return ComputePath("fp8", "w8a16 (FP8 weights dequantised to BF16)", "bf16", True)
        return ComputePath("fp8", "fp8", "fp8", False, f"{accel.name} has no FP8 path")
    if precision == "nvfp4":
        if accel.native_fp4 and accel.vendor.lower() == "nvidia":
            return ComputePath("nvfp4", "nvfp4 (native FP4 tensor cores)", "fp4", True)
        if accel.arch in WEIGHT_ONLY_FP4_ARCHS:
            return ComputePath("nvfp4", "w4a16 (FP4 weights dequantised to BF16 in the GEMM)", "bf16", True)
        return ComputePath(
            "nvfp4", "nvfp4", "bf16", False, f"{accel.name} ({accel.arch}) has no NVFP4 path; serve the BF16 or FP8 checkpoint"
        )
    raise ValueError(f"unknown precision {precision!r}")


def kv_dtype(requested: str, accel: Accelerator) -> str:
    """`auto` keeps BF16 KV (FP32 on CPU); an explicit choice is honoured where the hardware has it."""
    if requested == "auto":
        return "fp32" if accel.arch == "cpu" else "bf16"
    return requested


DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp8": 1}
