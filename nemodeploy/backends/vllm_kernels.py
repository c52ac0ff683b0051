"""Which vLLM kernels run on which GPU: the MoE and Mamba backends nemodeploy picks, and the ones it refuses.

Keyed by the catalog's `arch`. The device rules are read from vLLM 0.33's fused-MoE experts
(`_supports_current_device` in vllm/model_executor/layers/fused_moe/experts/*.py and the NVFP4
oracle, oracle/nvfp4.py): blackwell is compute capability family 100 (B200, GB200, B300, GB300),
grace-blackwell-gb10 family 120 (DGX Spark), hopper 9.0, ampere 8.0.
"""

from __future__ import annotations

BLACKWELL, GB10, HOPPER, AMPERE = "blackwell", "grace-blackwell-gb10", "hopper", "ampere"
AMD_ARCHS = frozenset({"cdna3", "cdna4"})

# MoE backends that have an NVFP4 (W4A4 or W4A16) path, and the architectures their kernels build for
NVFP4_MOE_ARCHS: dict[str, frozenset[str]] = {
    "flashinfer_trtllm": frozenset({BLACKWELL}),  # TrtLlmNvFp4Experts: family 100
    "flashinfer_cutedsl": frozenset({BLACKWELL}),  # FlashInferCuteDSLExperts: family 100
    "flashinfer_moe_ep_cutedsl": frozenset({BLACKWELL}),
    "flashinfer_cutlass": frozenset({BLACKWELL, GB10}),  # NVFP4 scheme needs capability >= 10.0
    "cutlass": frozenset({BLACKWELL, GB10}),  # CutlassExpertsFp4: families 100, 110, 120
    "b12x": frozenset({GB10}),  # family 120
    "flashinfer_b12x": frozenset({GB10}),
    "marlin": frozenset({BLACKWELL, GB10, HOPPER, AMPERE}),  # W4A16, capability >= 7.5
    "emulation": frozenset({BLACKWELL, GB10, HOPPER, AMPERE}),  # dequantise in Triton: slow, everywhere
}

# MoE backends that exist for one vendor only
AMD_ONLY_MOE = frozenset({"aiter", "aiter_mega_moe", "aiter_triton_mxfp4_bf16", "aiter_triton_mxfp4_mxfp4",
                          "rdna3", "flydsl"})
NVIDIA_ONLY_MOE = frozenset(NVFP4_MOE_ARCHS) - {"emulation"} | {"deep_gemm", "deep_gemm_mega_moe"}


def default_moe_backend(arch: str, precision: str) -> str:
    """The MoE backend nemodeploy passes: the fastest NVFP4 kernel the GPU has; Triton for BF16 / FP8.

    NVFP4: TRT-LLM's kernels on datacenter Blackwell (the vLLM recipes' choice), FlashInfer's
    CUTLASS ones on GB10, Marlin (FP4 weights, BF16 math) on Hopper and Ampere. Triton's fused
    MoE runs BF16 and FP8 on every NVIDIA and AMD GPU vLLM supports.
    """
    if arch == "cpu":
        return "auto"  # vLLM's CPU build has its own MoE path
    if precision == "nvfp4":
        return {BLACKWELL: "flashinfer_trtllm", GB10: "flashinfer_cutlass"}.get(arch, "marlin")
    return "triton"


def moe_backend_problem(backend: str, arch: str, precision: str) -> str | None:
    """Why `backend` cannot run this checkpoint on this GPU architecture, or None."""
    if backend == "auto":
        return None
    amd = arch in AMD_ARCHS
    if amd and backend in NVIDIA_ONLY_MOE:
        return f"the {backend} MoE kernels are NVIDIA-only and this is an AMD {arch} GPU"
    if not amd and backend in AMD_ONLY_MOE:
        return f"the {backend} MoE kernels are AMD (ROCm) only and this is an NVIDIA {arch} GPU"
    if precision == "nvfp4":
        archs = NVFP4_MOE_ARCHS.get(backend)
        if archs is None:
            return f"{backend} has no NVFP4 MoE kernel in vLLM"
        if arch not in archs:
            return f"{backend}'s NVFP4 MoE kernels do not build for {arch} (they run on {', '.join(sorted(archs))})"
    return None


def default_mamba_backend(arch: str) -> str:
    """vLLM's Triton selective-state update on GPUs (NVIDIA and AMD alike); its own kernel on the CPU build."""
    return "cpu" if arch == "cpu" else "triton"


def mamba_backend_problem(backend: str, arch: str) -> str | None:
    if (backend == "cpu") != (arch == "cpu"):
        return ("vLLM's CPU build runs the cpu Mamba backend only" if arch == "cpu"
                else f"the cpu Mamba backend is for vLLM's CPU build, not a {arch} GPU")
    if backend == "flashinfer" and arch in AMD_ARCHS:
        return f"FlashInfer's Mamba kernels are NVIDIA-only and this is an AMD {arch} GPU"
    return None
