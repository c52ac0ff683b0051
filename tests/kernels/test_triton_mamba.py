"""Mamba-2 Triton kernels against the PyTorch references in torch_ops."""

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from nemodeploy.engine.kernels import torch_ops, triton_mamba  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BF16 = torch.bfloat16
DT_LIMIT = (0.0, float("inf"))


def _close(out, ref, tol=1e-2):
    ref = ref.float()
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * ref.abs().max().item())


# ---------------------------------------------------------------- gated RMSNorm


def test_gated_rms_norm(device):
    torch.manual_seed(0)
    x = torch.randn(3, 64, device=device).to(BF16)
    z = torch.randn(3, 64, device=device).to(BF16)
    w = (1 + 0.1 * torch.randn(64, device=device)).to(BF16)
    out = triton_mamba.gated_rms_norm(x, z, w, 16, 1e-5)
    _close(out, torch_ops.gated_rms_norm(x, z, w, 16, 1e-5))


# ---------------------------------------------------------------- conv1d


def _conv_params(channels, device):
    weight = (torch.randn(channels, 4, device=device) * 0.5).to(BF16)
    bias = (torch.randn(channels, device=device) * 0.1).to(BF16)
    return weight, bias


def test_conv1d_varlen_reads_and_writes_slots(device):
    torch.manual_seed(1)
    channels, slots = 80, 5
    lengths = [2, 7, 1]  # shorter than the window, longer, single token
    x = torch.randn(sum(lengths), channels, device=device).to(BF16)
    weight, bias = _conv_params(channels, device)
    states = torch.randn(slots, channels, 3, device=device).to(BF16)
    starts = torch.tensor([0, 2, 9, 10], dtype=torch.int32, device=device)
    indices = torch.tensor([4, 0, 2], device=device)
    has_init = torch.tensor([True, False, True], device=device)
    ref_states = states.clone()
    ref = torch_ops.causal_conv1d_varlen(x, weight, bias, ref_states, starts, indices, has_init)
    out = triton_mamba.causal_conv1d_varlen(x, weight, bias, states, starts, indices, has_init)
    _close(out, ref)
    torch.testing.assert_close(states, ref_states, rtol=0, atol=0)


@pytest.mark.parametrize("with_intermediate", [False, True])
def test_conv1d_update(device, with_intermediate):
    torch.manual_seed(2)
    batch, length, channels = 2, 3, 48
    x = torch.randn(batch, length, channels, device=device).to(BF16)
    weight, bias = _conv_params(channels, device)
    states = torch.randn(4, channels, 3, device=device).to(BF16)
    indices = torch.tensor([3, 1], device=device)
    ref_states = states.clone()
    inter = torch.zeros(batch, length, channels, 3, device=device, dtype=BF16) if with_intermediate else None
    ref_inter = inter.clone() if with_intermediate else None
    ref = torch_ops.causal_conv1d_update(x, weight, bias, ref_states, indices, ref_inter)
    out = triton_mamba.causal_conv1d_update(x, weight, bias, states, indices, inter)
    _close(out, ref)
    torch.testing.assert_close(states, ref_states, rtol=0, atol=0)
    if with_intermediate:
        torch.testing.assert_close(inter, ref_inter, rtol=0, atol=0)


# ---------------------------------------------------------------- SSM


def _ssm_inputs(tokens, heads, head_dim, groups, state, device, lead=()):
    shape = (*lead, tokens)
    return dict(
        x=torch.randn(*shape, heads, head_dim, device=device).to(BF16),
        dt=(torch.randn(*shape, heads, device=device) - 1).to(BF16),
        A=-torch.rand(heads, device=device) * 2 - 0.5,
        B=torch.randn(*shape, groups, state, device=device).to(BF16),
        C=torch.randn(*shape, groups, state, device=device).to(BF16),
        D=torch.randn(heads, device=device),
        dt_bias=torch.randn(heads, device=device) * 0.5,
    )


@pytest.mark.parametrize("length,with_intermediate", [(1, False), (3, True)])
def test_selective_state_update(device, length, with_intermediate):
    torch.manual_seed(3)
    batch, heads, head_dim, groups, state = 2, 4, 16, 2, 16
    inputs = _ssm_inputs(length, heads, head_dim, groups, state, device, lead=(batch,))
    pool = torch.randn(3, heads, head_dim, state, device=device)
    indices = torch.tensor([2, 0], device=device)
    ref_pool = pool.clone()
    inter = torch.zeros(batch, length, heads, head_dim, state, device=device) if with_intermediate else None
    ref_inter = inter.clone() if with_intermediate else None
    limit = (1e-3, 0.5)
    ref = torch_ops.selective_state_update(**inputs, dt_limit=limit, ssm_states=ref_pool,
                                           state_indices=indices, intermediate_states=ref_inter)
    out = triton_mamba.selective_state_update(**inputs, dt_limit=limit, ssm_states=pool,
                                              state_indices=indices, intermediate_states=inter, block_p=8)
    _close(out, ref, 1e-4)
    _close(pool, ref_pool, 1e-4)
    if with_intermediate:
        _close(inter, ref_inter, 1e-4)
    assert torch.equal(pool[1], ref_pool[1])  # untouched slot


def _ssd_case(device, lengths, has_init, chunk=16, block_l=8):
    torch.manual_seed(4)
    heads, head_dim, groups, state = 4, 16, 2, 16
    inputs = _ssm_inputs(sum(lengths), heads, head_dim, groups, state, device)
    pool = torch.randn(4, heads, head_dim, state, device=device) * 0.5
    starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    indices = torch.tensor([3, 1, 0][: len(lengths)], device=device)
    init = torch.tensor(has_init, device=device)
    ref_pool = pool.clone()
    limit = (1e-3, 0.3)
    ref = torch_ops.ssd_chunk_scan_varlen(**inputs, chunk_size=chunk, dt_limit=limit, ssm_states=ref_pool,
                                          query_start_loc=starts, state_indices=indices, has_initial_state=init)
    out = triton_mamba.ssd_chunk_scan_varlen(**inputs, chunk_size=chunk, dt_limit=limit, ssm_states=pool,
                                             query_start_loc=starts, state_indices=indices, has_initial_state=init,
                                             block_l=block_l)
    return out, ref, pool, ref_pool


def test_ssd_chunk_scan_varlen(device):
    # sequences of 1, 2.5 and exactly 2 chunks, with and without a start state
    out, ref, pool, ref_pool = _ssd_case(device, [37, 1, 32], [True, False, True])
    assert not out.isnan().any()
    _close(out, ref, 2e-2)
    _close(pool, ref_pool, 2e-2)
    assert torch.equal(pool[2], ref_pool[2])  # untouched slot


@needs_cuda
@pytest.mark.gpu
def test_ssd_and_state_update_at_ultra_width():
    """256 heads x 64, 8 groups, state 128, chunk 128: the sm90 configs, NaN rows included."""
    torch.manual_seed(5)
    heads, head_dim, groups, state, lengths = 256, 64, 8, 128, [1000, 3000]
    inputs = _ssm_inputs(sum(lengths), heads, head_dim, groups, state, "cuda")
    pool = torch.zeros(2, heads, head_dim, state, device="cuda")
    starts = torch.tensor([0, 1000, 4000], dtype=torch.int32, device="cuda")
    indices = torch.tensor([1, 0], device="cuda")
    init = torch.tensor([False, False], device="cuda")
    ref_pool = pool.clone()
    kwargs = dict(chunk_size=128, dt_limit=DT_LIMIT, query_start_loc=starts, state_indices=indices, has_initial_state=init)
    ref = torch_ops.ssd_chunk_scan_varlen(**inputs, ssm_states=ref_pool, **kwargs)
    out = triton_mamba.ssd_chunk_scan_varlen(**inputs, ssm_states=pool, **kwargs)
    assert not out.isnan().any()
    _close(out, ref, 3e-2)
    _close(pool, ref_pool, 3e-2)

    step = _ssm_inputs(1, heads, head_dim, groups, state, "cuda", lead=(2,))
    ref_y = torch_ops.selective_state_update(**step, dt_limit=DT_LIMIT, ssm_states=ref_pool, state_indices=indices)
    y = triton_mamba.selective_state_update(**step, dt_limit=DT_LIMIT, ssm_states=pool, state_indices=indices)
    _close(y, ref_y, 3e-2)


@needs_cuda
@pytest.mark.gpu
def test_conv_and_norm_at_ultra_width():
    torch.manual_seed(6)
    channels, lengths = 18432, [700, 1, 300]
    x = torch.randn(sum(lengths), channels, device="cuda").to(BF16)
    weight, bias = _conv_params(channels, "cuda")
    states = torch.randn(4, channels, 3, device="cuda").to(BF16)
    starts = torch.tensor([0, 700, 701, 1001], dtype=torch.int32, device="cuda")
    indices = torch.tensor([1, 3, 0], device="cuda")
    init = torch.tensor([True, True, False], device="cuda")
    ref_states = states.clone()
    ref = torch_ops.causal_conv1d_varlen(x, weight, bias, ref_states, starts, indices, init)
    _close(triton_mamba.causal_conv1d_varlen(x, weight, bias, states, starts, indices, init), ref)
    torch.testing.assert_close(states, ref_states, rtol=0, atol=0)

    y, z = (torch.randn(64, 16384, device="cuda").to(BF16) for _ in range(2))
    w = (1 + 0.1 * torch.randn(16384, device="cuda")).to(BF16)
    _close(triton_mamba.gated_rms_norm(y, z, w, 2048, 1e-5), torch_ops.gated_rms_norm(y, z, w, 2048, 1e-5))
