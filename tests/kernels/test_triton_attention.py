"""The Triton paged attention against the PyTorch reference: prefill chunks over cached context,
fresh prompts and decode steps in one batch, over scattered pages, GQA, FP8 pages."""

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from nemodeploy.engine.kernels import torch_ops, triton_attention  # noqa: E402


def _batch(device, new_tokens, cached, heads, kv_heads, head_dim, page, dtype, cache_dtype=None, seed=0):
    """q for the new tokens and caches holding every sequence's keys, its pages in a shuffled order."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [n + c for n, c in zip(new_tokens, cached)]
    pages_per_seq = [-(-s // page) for s in seq_lens]
    num_pages = sum(pages_per_seq) + 3  # a few pages no sequence uses
    order = torch.randperm(num_pages, generator=gen)
    tables = torch.zeros(len(seq_lens), max(pages_per_seq), dtype=torch.int32)
    used = 0
    for b, n in enumerate(pages_per_seq):
        tables[b, :n] = order[used:used + n]
        used += n
    k_cache = torch.randn(num_pages, page, kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_pages, page, kv_heads, head_dim, generator=gen)
    q = torch.randn(sum(new_tokens), heads, head_dim, generator=gen)
    starts = torch.tensor([0, *torch.tensor(new_tokens).cumsum(0).tolist()], dtype=torch.int32)
    move = lambda t, dt=None: t.to(device=device, dtype=dt or t.dtype)  # noqa: E731
    cache_dtype = cache_dtype or dtype
    return (move(q, dtype), move(k_cache, cache_dtype), move(v_cache, cache_dtype), move(tables), move(starts),
            move(torch.tensor(seq_lens, dtype=torch.int32)))


CASES = {
    # name: (new tokens per sequence, cached tokens per sequence, heads, kv heads, head dim, page)
    "mixed prefill and decode": ([5, 1, 33, 1], [0, 40, 17, 3], 4, 2, 16, 16),
    "decode only, a group of 8": ([1, 1, 1], [70, 1, 129], 16, 2, 32, 16),
    "pages smaller than a key tile": ([9, 1], [6, 30], 4, 1, 16, 8),
    "one long prompt, wide heads": ([130], [0], 2, 2, 64, 16),
}


@pytest.mark.parametrize("case", CASES)
def test_paged_attention_matches_the_reference_fp32(device, case):
    inputs = _batch(device, *CASES[case], torch.float32)
    ref = torch_ops.paged_attention(*inputs, scale=0.3)
    out = triton_attention.paged_attention(*inputs, scale=0.3)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_paged_attention_bf16_and_fp8_pages_with_a_tensor_scale(device):
    """bf16 queries over FP8 pages, the scale a 0-d tensor (as attention.py passes it with k_scale)."""
    inputs = _batch(device, *CASES["mixed prefill and decode"], torch.bfloat16, cache_dtype=torch.float8_e4m3fn)
    scale = torch.tensor(0.25, device=device)
    ref = torch_ops.paged_attention(*inputs, scale=scale).float()
    out = triton_attention.paged_attention(*inputs, scale=scale).float()
    assert out.dtype == ref.dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=3e-2, atol=3e-2)


def test_sequences_just_over_a_query_block_each(device):
    """33 new tokens a sequence (the tile holds 32 tokens of a 2-head group): every sequence needs a
    second, one-token block, the most blocks the launch grid is sized for."""
    inputs = _batch(device, [33] * 5, [2, 0, 9, 64, 31], 4, 2, 16, 16, torch.float32, seed=3)
    out = triton_attention.paged_attention(*inputs, scale=1.0)
    torch.testing.assert_close(out, torch_ops.paged_attention(*inputs, scale=1.0), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.gpu
def test_paged_attention_at_ultra_width_in_bf16():
    """64 query heads over 2 KV heads of 128 dims (Ultra at tp 1): decode rows and a prefill chunk."""
    inputs = _batch("cuda", [1, 1, 1, 200], [1000, 17, 511, 300], 64, 2, 128, 16, torch.bfloat16)
    ref = torch_ops.paged_attention(*inputs, scale=128**-0.5).float()
    out = triton_attention.paged_attention(*inputs, scale=128**-0.5).float()
    torch.testing.assert_close(out, ref, rtol=3e-2, atol=3e-2)
