"""W4A16 LatentMoE: the grouped expert GEMM of triton_moe with NVFP4 expert weights.

Weights stay packed in memory (4.5 bits a weight, see ``nvfp4.py`` for the layout) and are
dequantised in registers inside the K loop, so decode streams 3.6x fewer bytes than bf16.
E2M1 codes become fp16 by moving their bits into place (no table, no branch); E4M3 scales by the
fp8 conversion (one instruction on sm_89 and later; the CPU interpreter does the same).
"""

import torch
import triton
import triton.language as tl

from nemodeploy.engine.kernels.nvfp4 import BLOCK, NVFP4Weight
from nemodeploy.engine.kernels import triton_moe
from nemodeploy.engine.kernels.triton_moe import ExpertGroups, GemmConfig, align_by_expert, dot_args

# Decode streams 4.5-bit weights: wider column tiles than bf16's keep more bytes in flight per
# program (on an H200 at Ultra's widths, 16x128x128 beat 16x64x128 by 1.5x, 2026-11-30).
DECODE_CONFIG = GemmConfig(block_m=16, block_n=128, block_k=128, num_warps=4, num_stages=4, swap_ab=True)


def pick_config(num_tokens: int) -> GemmConfig:
    return triton_moe.pick_config(num_tokens, DECODE_CONFIG)


@triton.jit
def _e2m1_as_f16(code):
    """4-bit E2M1 code -> fp16 holding its value times 2**-14, by moving bits, not by arithmetic.

    Sign to bit 15, the exponent (bias 1) and mantissa bits to fp16's lowest exponent bits and top
    mantissa bit: codes with exponent 0 land on fp16 subnormals, which is what makes 0.5 come out
    right without a branch.
    """
    bits = ((code & 8) << 12) | ((code & 7) << 9)
    return bits.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def _nvfp4_grouped_gemm_kernel(
    a_ptr, packed_ptr, scales_ptr, global_scale_ptr, out_ptr, pair_weight_ptr,
    sorted_pairs_ptr, tile_expert_ptr, num_padded_ptr,
    num_pairs, num_experts, N, K,
    stride_am, stride_pe, stride_pn, stride_se, stride_sn, stride_om,
    A_ROW_DIV: tl.constexpr, RELU2: tl.constexpr, SCALE_BY_PAIR_WEIGHT: tl.constexpr,
    DOT: tl.constexpr, PRECISION: tl.constexpr, EVEN_K: tl.constexpr, SWAP_AB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SCALE_BLOCK: tl.constexpr,
):
    """The weight tile is read as [BLOCK_N, BLOCK_K / 2] bytes along K (coalesced, vector loads).
    The low nibbles hold the even k, the high nibbles the odd k: rather than interleave them, the
    activations are read as their even and odd columns and the tile takes two dots.
    Each weight is e2m1 * 2**-14 times scale (fp16, exact: the product has at most 5 significant
    bits and lies in fp16's range), so the global scale times 2**14 is applied once to the sum.
    EVEN_K (K a multiple of BLOCK_K) drops the mask along K, which would stop the byte loads
    from being vectorised."""
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
    HALF: tl.constexpr = BLOCK_K // 2
    js = tl.arange(0, HALF)  # byte j of the tile holds k = 2j and 2j + 1
    col_ok = (cols < N)[:, None]
    byte_ptrs = packed_ptr + expert * stride_pe + cols[:, None] * stride_pn + js[None, :]
    scale_ptrs = scales_ptr + expert * stride_se + cols[:, None] * stride_sn + (js // (SCALE_BLOCK // 2))[None, :]
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + 2 * js[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_M] if SWAP_AB else [BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            w_mask, a_mask = col_ok, real[:, None]
        else:
            k_ok = (js < (K - k0) // 2)[None, :]
            w_mask, a_mask = col_ok & k_ok, real[:, None] & k_ok
        byte = tl.load(byte_ptrs, mask=w_mask, other=0).to(tl.int32)
        scale = tl.load(scale_ptrs, mask=w_mask, other=0).to(tl.float8e4nv, bitcast=True).to(tl.float16)
        w_even = (_e2m1_as_f16(byte & 15) * scale).to(DOT)
        w_odd = (_e2m1_as_f16(byte >> 4) * scale).to(DOT)
        a_even = tl.load(a_ptrs, mask=a_mask, other=0.0).to(DOT)
        a_odd = tl.load(a_ptrs + 1, mask=a_mask, other=0.0).to(DOT)
        if SWAP_AB:  # out^T = W a^T
            acc = tl.dot(w_even, tl.trans(a_even), acc, input_precision=PRECISION)
            acc = tl.dot(w_odd, tl.trans(a_odd), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(a_even, tl.trans(w_even), acc, input_precision=PRECISION)
            acc = tl.dot(a_odd, tl.trans(w_odd), acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        byte_ptrs += HALF
        scale_ptrs += BLOCK_K // SCALE_BLOCK
    if SWAP_AB:
        acc = tl.trans(acc)
    acc = acc * (tl.load(global_scale_ptr + expert) * 16384.0)
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
        SCALE_BY_PAIR_WEIGHT=pair_weights is not None, **dot_args(a), EVEN_K=k % config.block_k == 0,
        SWAP_AB=config.swap_ab,
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
