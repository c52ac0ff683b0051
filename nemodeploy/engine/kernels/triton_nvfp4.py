"""W4A16 LatentMoE: the grouped expert GEMM of triton_moe with NVFP4 expert weights.

Weights stay packed in memory (4.5 bits a weight, see ``nvfp4.py`` for the layout) and are
dequantised in registers inside the K loop, so decode streams 3.6x fewer bytes than bf16.
E2M1 codes and E4M3 scales are decoded with integer arithmetic rather than fp8 casts: that
needs no fp8 hardware path and gives the same numbers in the CPU interpreter.
"""

import torch
import triton
import triton.language as tl

from nemodeploy.engine.kernels.nvfp4 import BLOCK, NVFP4Weight
from nemodeploy.engine.kernels.triton_moe import (
    ExpertGroups, GemmConfig, align_by_expert, dot_dtype, pick_config,
)


@triton.jit
def _e2m1_to_float(code):
    """4-bit code (sign, 2-bit exponent with bias 1, 1-bit mantissa) -> fp32."""
    exponent = (code >> 1) & 3
    mantissa = (code & 1).to(tl.float32)
    magnitude = tl.where(exponent == 0, 0.5 * mantissa,
                         (1.0 + 0.5 * mantissa) * (1 << tl.maximum(exponent - 1, 0)).to(tl.float32))
    return tl.where((code & 8) != 0, -magnitude, magnitude)


@triton.jit
def _e4m3_to_float(bits):
    """FP8 E4M3 (bias 7, subnormals, no infinities) bit pattern -> fp32."""
    exponent = (bits >> 3) & 15
    mantissa = (bits & 7).to(tl.float32) * 0.125
    magnitude = tl.where(exponent == 0, mantissa * 0.015625,
                         (1.0 + mantissa) * tl.exp2((exponent - 7).to(tl.float32)))
    return tl.where((bits & 128) != 0, -magnitude, magnitude)


@triton.jit
def _nvfp4_grouped_gemm_kernel(
    a_ptr, packed_ptr, scales_ptr, global_scale_ptr, out_ptr, pair_weight_ptr,
    sorted_pairs_ptr, tile_expert_ptr, num_padded_ptr,
    num_pairs, num_experts, N, K,
    stride_am, stride_pe, stride_pn, stride_se, stride_sn, stride_om,
    A_ROW_DIV: tl.constexpr, RELU2: tl.constexpr, SCALE_BY_PAIR_WEIGHT: tl.constexpr,
    DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SCALE_BLOCK: tl.constexpr,
):
    tile_m = tl.program_id(0)
    tile_n = tl.program_id(1)
    if tile_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    expert = tl.load(tile_expert_ptr + tile_m).to(tl.int64)
    pairs = tl.load(sorted_pairs_ptr + tile_m * BLOCK_M + tl.arange(0, BLOCK_M))
    real = pairs < num_pairs
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    out_ptrs = out_ptr + pairs.to(tl.int64)[:, None] * stride_om + cols[None, :]
    out_mask = real[:, None] & (cols[None, :] < N)
    if expert == num_experts:  # pairs routed to another rank's experts contribute zero
        tl.store(out_ptrs, tl.zeros([BLOCK_M, BLOCK_N], dtype=out_ptr.dtype.element_ty), mask=out_mask)
        return
    a_rows = (pairs // A_ROW_DIV).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    col_ok = cols[None, :] < N
    # Each byte holds elements 2i (low nibble) and 2i+1 (high nibble); both lanes load the
    # same byte, which the cache serves once.
    byte_ptrs = packed_ptr + expert * stride_pe + cols[None, :] * stride_pn + (ks // 2)[:, None]
    scale_ptrs = scales_ptr + expert * stride_se + cols[None, :] * stride_sn + (ks // SCALE_BLOCK)[:, None]
    shift = ((ks % 2) * 4)[:, None]
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + ks[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = ks < K - k0
        a = tl.load(a_ptrs, mask=real[:, None] & k_ok[None, :], other=0.0)
        byte = tl.load(byte_ptrs, mask=k_ok[:, None] & col_ok, other=0).to(tl.int32)
        scale = _e4m3_to_float(tl.load(scale_ptrs, mask=k_ok[:, None] & col_ok, other=0).to(tl.int32))
        w = _e2m1_to_float((byte >> shift) & 15) * scale
        acc = tl.dot(a.to(DOT), w.to(DOT), acc)
        a_ptrs += BLOCK_K
        byte_ptrs += BLOCK_K // 2
        scale_ptrs += BLOCK_K // SCALE_BLOCK
    acc = acc * tl.load(global_scale_ptr + expert)
    if RELU2:
        acc = tl.maximum(acc, 0.0)
        acc = acc * acc
    if SCALE_BY_PAIR_WEIGHT:
        acc = acc * tl.load(pair_weight_ptr + pairs, mask=real, other=0.0)[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def nvfp4_grouped_gemm(
    a: torch.Tensor,
    weight: NVFP4Weight,
    groups: ExpertGroups,
    *,
    a_per_token: bool,
    relu2: bool,
    pair_weights: torch.Tensor | None = None,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """``triton_moe.grouped_gemm`` with an NVFP4 weight of logical shape [E, N, K]."""
    config = config or pick_config(groups.num_pairs // groups.top_k)
    if config.block_m != groups.block_m or config.block_k % BLOCK:
        raise ValueError(f"config {config} does not fit groups of {groups.block_m} / scale block {BLOCK}")
    a = a.contiguous()
    num_experts, n, k = weight.shape
    packed, scales = weight.packed, weight.scales
    out = torch.empty(groups.num_pairs, n, dtype=a.dtype, device=a.device)
    if groups.num_pairs == 0:
        return out
    grid = (groups.max_tiles, triton.cdiv(n, config.block_n))
    _nvfp4_grouped_gemm_kernel[grid](
        a, packed, scales, weight.global_scale.float().contiguous(), out,
        pair_weights if pair_weights is not None else out,
        groups.sorted_pairs, groups.tile_expert, groups.num_padded,
        groups.num_pairs, num_experts, n, k,
        a.stride(0), packed.stride(0), packed.stride(1), scales.stride(0), scales.stride(1), out.stride(0),
        A_ROW_DIV=groups.top_k if a_per_token else 1, RELU2=relu2,
        SCALE_BY_PAIR_WEIGHT=pair_weights is not None, DOT=dot_dtype(a),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, SCALE_BLOCK=BLOCK,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out


def routed_experts_nvfp4(
    x: torch.Tensor,
    w_up: NVFP4Weight,
    w_down: NVFP4Weight,
    weights: torch.Tensor,
    ids: torch.Tensor,
    expert_start: int,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """``torch_ops.routed_experts`` with NVFP4 experts: w_up [E, F, L], w_down [E, L, F] logical."""
    num_tokens, top_k = ids.shape
    config = config or pick_config(num_tokens)
    groups = align_by_expert(ids, w_up.shape[0], config.block_m, expert_start)
    hidden = nvfp4_grouped_gemm(x, w_up, groups, a_per_token=True, relu2=True, config=config)
    pair_weights = weights.reshape(-1).float().contiguous()
    out = nvfp4_grouped_gemm(hidden, w_down, groups, a_per_token=False, relu2=False,
                             pair_weights=pair_weights, config=config)
    return out.view(num_tokens, top_k, -1).sum(1, dtype=torch.float32).to(x.dtype)


def linear_nvfp4(x: torch.Tensor, weight: NVFP4Weight, config: GemmConfig | None = None) -> torch.Tensor:
    """x [T, K] @ W^T for one NVFP4 matrix W of logical shape [N, K]: the grouped GEMM with one expert."""
    config = config or pick_config(x.shape[0])
    ids = torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)
    groups = align_by_expert(ids, 1, config.block_m)
    return nvfp4_grouped_gemm(x, weight.stacked(), groups, a_per_token=True, relu2=False, config=config)
