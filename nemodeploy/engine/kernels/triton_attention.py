"""Paged attention in Triton: causal GQA over the KV pages, prefill chunks and decode in one launch.

Same contract as ``torch_ops.paged_attention`` (see ``kernels/__init__.py``), whose loop over
the sequences costs a dozen launches and a host sync per sequence. Here one program takes a
block of one sequence's new tokens times the query heads that share one KV head (GQA), laid
out as the rows of one tile, and streams that sequence's keys and values page by page with an
online softmax (flash attention), so each KV page is read once per block of queries. Which
sequence a program serves is worked out on the device from ``query_start_loc`` (no host sync:
the launch fits in a CUDA graph); programs past the last block exit at once.
"""

import torch
import triton
import triton.language as tl

from nemodeploy.engine.kernels.triton_moe import dot_args


@triton.jit
def _paged_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, block_tables_ptr, query_start_ptr, seq_lens_ptr,
    block_seq_ptr, block_first_ptr, scale_ptr,
    num_seqs, stride_bt, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    HQ: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr,
    DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_Q: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seq = tl.load(block_seq_ptr + tl.program_id(0))
    if seq >= num_seqs:
        return
    kv_head = tl.program_id(1)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    first = tl.load(block_first_ptr + tl.program_id(0))  # this block's first new token, within the sequence
    rows = tl.arange(0, BLOCK_Q * GROUP_PAD)  # row = token of the block * GROUP_PAD + head in the group
    token = first + rows // GROUP_PAD
    head = kv_head * GROUP + rows % GROUP_PAD
    row_ok = (token < q_len) & (rows % GROUP_PAD < GROUP)
    position = seq_len - q_len + token  # the query's place in the sequence: it sees keys 0..position
    ds = tl.arange(0, BLOCK_D)
    d_ok = ds < HEAD_DIM
    q_rows = (q_start + token).to(tl.int64) * HQ + head
    q = tl.load(q_ptr + q_rows[:, None] * HEAD_DIM + ds[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    q = q.to(DOT)
    scale = tl.load(scale_ptr)
    m = tl.full([BLOCK_Q * GROUP_PAD], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_Q * GROUP_PAD], tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_PAD, BLOCK_D], tl.float32)
    last = tl.minimum(seq_len - q_len + first + BLOCK_Q, seq_len)  # keys any row of the block sees
    keys = tl.arange(0, BLOCK_N)
    for n0 in range(0, last, BLOCK_N):
        n = n0 + keys
        n_ok = n < last
        page = tl.load(block_tables_ptr + seq.to(tl.int64) * stride_bt + n // PAGE, mask=n_ok, other=0).to(tl.int64)
        k = tl.load(k_cache_ptr + page[None, :] * stride_kb + (n % PAGE)[None, :] * stride_ks + kv_head * stride_kh
                    + ds[:, None], mask=n_ok[None, :] & d_ok[:, None], other=0.0)  # [D, N]
        scores = tl.dot(q, k.to(DOT), input_precision=PRECISION) * scale
        visible = (n[None, :] <= position[:, None]) & n_ok[None, :]
        scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that sees no key yet keeps zeros
        p = tl.exp(scores - m_safe[:, None])
        rescale = tl.exp(m - m_safe)
        denom = denom * rescale + tl.sum(p, axis=1)
        v = tl.load(v_cache_ptr + page[:, None] * stride_vb + (n % PAGE)[:, None] * stride_vs + kv_head * stride_vh
                    + ds[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # [N, D]
        acc = acc * rescale[:, None] + tl.dot(p.to(DOT), v.to(DOT), input_precision=PRECISION)
        m = m_new
    out = acc / tl.where(denom == 0, 1.0, denom)[:, None]
    tl.store(out_ptr + q_rows[:, None] * HEAD_DIM + ds[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float | torch.Tensor,
) -> torch.Tensor:
    """Same contract as ``torch_ops.paged_attention``; `scale` may be a 0-d tensor (FP8 KV's k_scale folded in)."""
    q = q.contiguous()
    tokens, num_heads, head_dim = q.shape
    page, kv_heads = k_cache.shape[1], k_cache.shape[2]
    if k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("each cached key and value must be contiguous over the head dim")
    group = num_heads // kv_heads
    out = torch.empty_like(q)
    num_seqs = seq_lens.numel()
    if tokens == 0 or num_seqs == 0:
        return out
    group_pad = triton.next_power_of_2(group)
    block_q = max(1, 64 // group_pad)  # 64 rows a tile when the group is small; one token when it is large
    # Each sequence's new tokens in blocks of block_q, numbered on the device: an upper bound of
    # blocks is launched (tokens / block_q rounded up, plus one partial block per sequence).
    starts = query_start_loc.to(torch.int64)
    blocks = (starts[1:] - starts[:-1] + block_q - 1) // block_q
    ends = blocks.cumsum(0)
    max_blocks = triton.cdiv(tokens, block_q) + num_seqs
    index = torch.arange(max_blocks, device=q.device)
    block_seq = torch.searchsorted(ends, index, right=True)  # num_seqs past the last block
    block_first = (index - (ends - blocks)[block_seq.clamp(max=num_seqs - 1)]) * block_q
    scale_t = torch.as_tensor(scale, dtype=torch.float32, device=q.device).reshape(1)
    _paged_attention_kernel[(max_blocks, kv_heads)](
        q, k_cache, v_cache, out, block_tables, query_start_loc, seq_lens,
        block_seq.to(torch.int32), block_first.to(torch.int32), scale_t,
        num_seqs, block_tables.stride(0), *k_cache.stride()[:3], *v_cache.stride()[:3],
        HQ=num_heads, GROUP=group, HEAD_DIM=head_dim, PAGE=page, **dot_args(q),
        BLOCK_Q=block_q, GROUP_PAD=group_pad, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_N=64,  # keys a tile, across pages (each key finds its page in the block table)
    )
    return out
