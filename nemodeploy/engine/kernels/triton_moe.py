"""LatentMoE in Triton: routing, token grouping by expert, grouped expert GEMM with relu2 fused.

The routed experts run in the latent space (2048 -> 5120 -> 2048) on bf16 activations. Flow:

1. :func:`moe_route`: one program per token computes sigmoid scores from fp32 logits, chooses the
   top-k by ``score + correction_bias``, renormalises the unbiased scores of the chosen experts
   and multiplies by ``routed_scaling``.
2. :func:`align_by_expert`: groups the ``T * top_k`` (token, expert) pairs by expert and pads
   every expert's group to a multiple of ``block_m`` so a GEMM tile never spans two experts.
   Sizes stay fixed for a given ``T`` (no host sync), so the whole layer can be captured in a
   CUDA graph; tiles past the real padded length exit at once.
3. :func:`grouped_gemm`: one program per (row tile, column tile); it reads one expert's weight
   tile straight from the stacked ``[E, N, K]`` tensor. Decode streams each active expert's
   weights exactly once (memory-bound, parallel over experts x column tiles); prefill uses
   large tiles for wgmma.

Under the CPU interpreter ``tl.dot`` cannot take bf16 operands (it multiplies their bit
patterns), so operands are cast to the ``DOT`` dtype of :func:`dot_args`: fp32 on CPU, the
activations' own dtype on CUDA, with fp32 products in full precision rather than tf32.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from nemodeploy.engine.kernels import torch_ops


def dot_args(tensor: torch.Tensor) -> dict:
    """``DOT`` (operand dtype) and ``PRECISION`` (``input_precision``) for a kernel's ``tl.dot``s.

    bf16 / fp16 activations on the GPU keep their dtype; fp32 ones stay fp32 with "ieee"
    products, so an fp32 engine is fp32 throughout (tf32 or a bf16 cast would cost it ~3e-3 of
    relative error against an fp32 reference); under the CPU interpreter everything is fp32.
    """
    half = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
    dot = half.get(tensor.dtype, tl.float32) if tensor.is_cuda else tl.float32
    return dict(DOT=dot, PRECISION="ieee" if dot == tl.float32 else "tf32")


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    # NVFP4 kernel only: the dequantised weight tile as the MMA's first operand, which Hopper's
    # wgmma takes from registers, so it skips the trip through shared memory a second operand makes
    swap_ab: bool = False


# Decode: a few rows per expert, weights streamed once; narrow N tiles give enough programs
# (22 experts x 5120 / 64 = 1760) to cover 132 SMs without split-K.
DECODE_CONFIG = GemmConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4)
# Prefill: ~350 rows per expert at 8192 tokens; 128x256 tiles feed wgmma (on an H200 at Ultra's
# widths: 18.3 ms against 21.8 for 128x128 x 64 in 3 stages, 2026-11-30).
PREFILL_CONFIG = GemmConfig(block_m=128, block_n=256, block_k=64, num_warps=8, num_stages=4)


def pick_config(num_tokens: int, decode: GemmConfig = DECODE_CONFIG) -> GemmConfig:
    """`decode` for decode-sized batches (a few rows per expert), PREFILL_CONFIG above."""
    return decode if num_tokens <= 64 else PREFILL_CONFIG


@triton.jit
def _route_kernel(
    logits_ptr, bias_ptr, weights_ptr, ids_ptr,
    num_experts, routed_scaling,
    TOP_K: tl.constexpr, SLOTS: tl.constexpr, BLOCK_E: tl.constexpr, HAS_BIAS: tl.constexpr,
    RENORMALIZE: tl.constexpr,
):
    token = tl.program_id(0)
    experts = tl.arange(0, BLOCK_E)
    valid = experts < num_experts
    logits = tl.load(logits_ptr + token * num_experts + experts, mask=valid, other=0.0).to(tl.float32)
    scores = tl.sigmoid(logits)
    choice = scores
    if HAS_BIAS:
        choice += tl.load(bias_ptr + experts, mask=valid, other=0.0).to(tl.float32)
    choice = tl.where(valid, choice, float("-inf"))
    slots = tl.arange(0, SLOTS)  # TOP_K rounded up to a power of two for tl.arange
    chosen_ids = tl.zeros([SLOTS], dtype=tl.int32)
    chosen_scores = tl.zeros([SLOTS], dtype=tl.float32)
    for k in tl.static_range(TOP_K):
        best = tl.max(choice, axis=0)
        # Lowest index among ties, as torch.topk does on CPU and CUDA for distinct scores.
        index = tl.min(tl.where(choice == best, experts, BLOCK_E), axis=0)
        score = tl.sum(tl.where(experts == index, scores, 0.0), axis=0)
        chosen_ids = tl.where(slots == k, index, chosen_ids)
        chosen_scores = tl.where(slots == k, score, chosen_scores)
        choice = tl.where(experts == index, float("-inf"), choice)
    if RENORMALIZE:
        chosen_scores = chosen_scores / (tl.sum(chosen_scores, axis=0) + 1e-20)
    used = slots < TOP_K
    tl.store(weights_ptr + token * TOP_K + slots, chosen_scores * routed_scaling, mask=used)
    tl.store(ids_ptr + token * TOP_K + slots, chosen_ids, mask=used)


def moe_route(
    router_logits: torch.Tensor,
    correction_bias: torch.Tensor | None,
    top_k: int,
    n_group: int,
    topk_group: int,
    renormalize: bool,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``torch_ops.moe_route``; group-limited routing (n_group > 1, not used
    by Nemotron-H) goes to the reference."""
    if n_group > 1:
        return torch_ops.moe_route(router_logits, correction_bias, top_k, n_group, topk_group,
                                   renormalize, routed_scaling_factor)
    num_tokens, num_experts = router_logits.shape
    logits = router_logits.float().contiguous()
    weights = torch.empty(num_tokens, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(num_tokens, top_k, dtype=torch.int32, device=logits.device)
    if num_tokens:
        bias = correction_bias.float().contiguous() if correction_bias is not None else logits
        _route_kernel[(num_tokens,)](
            logits, bias, weights, ids, num_experts, routed_scaling_factor,
            TOP_K=top_k, SLOTS=triton.next_power_of_2(top_k),
            BLOCK_E=triton.next_power_of_2(num_experts), HAS_BIAS=correction_bias is not None,
            RENORMALIZE=renormalize,
        )
    return weights, ids.long()


@dataclass(frozen=True)
class ExpertGroups:
    """(token, expert) pairs grouped by expert, each group padded to a multiple of ``block_m``.

    ``sorted_pairs[i]`` is a flat pair index ``token * top_k + slot`` or ``num_pairs`` for padding;
    ``tile_expert[b]`` is the expert of row tile ``b``; ``num_padded`` (a 1-element tensor, kept on
    the device) is how many rows of ``sorted_pairs`` are real or padding, the rest is unused.
    """

    sorted_pairs: torch.Tensor
    tile_expert: torch.Tensor
    num_padded: torch.Tensor
    num_pairs: int
    top_k: int
    block_m: int

    @property
    def max_tiles(self) -> int:
        return self.tile_expert.numel()


def align_by_expert(
    topk_ids: torch.Tensor, num_experts: int, block_m: int, expert_start: int = 0
) -> ExpertGroups:
    """Group pairs by local expert with device-side ops only (no host sync, CUDA-graph safe).

    Experts outside [expert_start, expert_start + num_experts) live on other ranks: their pairs
    go to an extra group ``num_experts`` whose tiles the GEMM fills with zeros.
    """
    num_tokens, top_k = topk_ids.shape
    num_pairs = num_tokens * top_k
    device = topk_ids.device
    flat = topk_ids.reshape(-1).long() - expert_start
    flat = torch.where((flat >= 0) & (flat < num_experts), flat, num_experts)
    num_experts += 1
    counts = torch.zeros(num_experts, dtype=torch.long, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = padded.cumsum(0)
    order = torch.sort(flat, stable=True).indices
    expert_of_sorted = flat[order]
    first_of_expert = counts.cumsum(0) - counts
    rank = torch.arange(num_pairs, device=device) - first_of_expert[expert_of_sorted]
    destination = (padded_end - padded)[expert_of_sorted] + rank
    # At most min(E, pairs) experts are active, each wasting at most block_m - 1 rows.
    max_rows = num_pairs + min(num_experts, num_pairs) * (block_m - 1)
    max_tiles = triton.cdiv(max(max_rows, 1), block_m)
    sorted_pairs = torch.full((max_tiles * block_m,), num_pairs, dtype=torch.int32, device=device)
    sorted_pairs[destination] = order.to(torch.int32)
    tile_start = torch.arange(max_tiles, device=device) * block_m
    tile_expert = torch.searchsorted(padded_end, tile_start, right=True).clamp(max=num_experts - 1)
    return ExpertGroups(
        sorted_pairs=sorted_pairs,
        tile_expert=tile_expert.to(torch.int32),
        num_padded=padded_end[-1:].to(torch.int32),
        num_pairs=num_pairs,
        top_k=top_k,
        block_m=block_m,
    )


@triton.jit
def _grouped_gemm_kernel(
    a_ptr, w_ptr, out_ptr, pair_weight_ptr,
    sorted_pairs_ptr, tile_expert_ptr, num_padded_ptr,
    num_pairs, num_experts, N, K,
    stride_am, stride_we, stride_wn, stride_wk, stride_om,
    A_ROW_DIV: tl.constexpr, RELU2: tl.constexpr, SCALE_BY_PAIR_WEIGHT: tl.constexpr,
    DOT: tl.constexpr, PRECISION: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """EVEN_K (K a multiple of BLOCK_K) drops the mask along K, which would stop the weight loads
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
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + ks[None, :]
    w_ptrs = w_ptr + expert * stride_we + cols[None, :] * stride_wn + ks[:, None] * stride_wk
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    col_ok = (cols < N)[None, :]
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a_mask, w_mask = real[:, None], col_ok
        else:
            k_ok = ks < K - k0
            a_mask, w_mask = real[:, None] & k_ok[None, :], k_ok[:, None] & col_ok
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        w = tl.load(w_ptrs, mask=w_mask, other=0.0)
        acc = tl.dot(a.to(DOT), w.to(DOT), acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wk
    if RELU2:
        acc = tl.maximum(acc, 0.0)
        acc = acc * acc
    if SCALE_BY_PAIR_WEIGHT:
        acc = acc * tl.load(pair_weight_ptr + pairs, mask=real, other=0.0)[:, None]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def grouped_gemm(
    a: torch.Tensor,
    weight: torch.Tensor,
    groups: ExpertGroups,
    *,
    a_per_token: bool,
    relu2: bool,
    pair_weights: torch.Tensor | None = None,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """Per pair p = (token, slot): out[p] = act(a[row] @ weight[expert(p)].T) [* pair_weights[p]].

    ``a`` is [T, K] indexed by token when ``a_per_token`` (the up projection reads the shared
    latent), else [T * top_k, K] indexed by pair (the down projection reads the expert outputs).
    ``weight`` is stacked [E, N, K] as the checkpoint stores it. Returns [T * top_k, N] in a's dtype.
    """
    config = config or pick_config(groups.num_pairs // groups.top_k)
    if config.block_m != groups.block_m:
        raise ValueError(f"groups padded to {groups.block_m} rows, config tiles {config.block_m}")
    a = a.contiguous()
    num_experts, n, k = weight.shape
    out = torch.empty(groups.num_pairs, n, dtype=a.dtype, device=a.device)
    if groups.num_pairs == 0:
        return out
    grid = (groups.max_tiles, triton.cdiv(n, config.block_n))
    _grouped_gemm_kernel[grid](
        a, weight, out, pair_weights if pair_weights is not None else out,
        groups.sorted_pairs, groups.tile_expert, groups.num_padded,
        groups.num_pairs, num_experts, n, k,
        a.stride(0), weight.stride(0), weight.stride(1), weight.stride(2), out.stride(0),
        A_ROW_DIV=groups.top_k if a_per_token else 1, RELU2=relu2,
        SCALE_BY_PAIR_WEIGHT=pair_weights is not None, **dot_args(a), EVEN_K=k % config.block_k == 0,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out


def routed_experts(
    x: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    expert_start: int,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """Same contract as ``torch_ops.routed_experts``: x [T, L] (the latent), w_up [E, F, L],
    w_down [E, L, F], weights [T, k] fp32 (renormalised and scaled), ids [T, k] global."""
    num_tokens, top_k = ids.shape
    config = config or pick_config(num_tokens)
    groups = align_by_expert(ids, w_up.shape[0], config.block_m, expert_start)
    hidden = grouped_gemm(x, w_up, groups, a_per_token=True, relu2=True, config=config)
    pair_weights = weights.reshape(-1).float().contiguous()
    out = grouped_gemm(hidden, w_down, groups, a_per_token=False, relu2=False,
                       pair_weights=pair_weights, config=config)
    return out.view(num_tokens, top_k, -1).sum(1, dtype=torch.float32).to(x.dtype)
