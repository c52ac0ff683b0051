"""NVFP4 reference (nvfp4.py) and the W4A16 Triton grouped GEMM against it."""

import dataclasses

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from nemodeploy.engine.kernels import nvfp4, torch_ops, triton_nvfp4  # noqa: E402
from nemodeploy.engine.kernels.triton_moe import GemmConfig  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TINY = GemmConfig(block_m=16, block_n=16, block_k=32, num_warps=1, num_stages=1)
# both operand orders of the kernel's dot (swap_ab: the weight tile first)
TINY_ORDERS = pytest.mark.parametrize("config", [TINY, dataclasses.replace(TINY, swap_ab=True)], ids=["a-first", "w-first"])


def test_quantize_round_trips_representable_values():
    values = nvfp4.E2M1_VALUES.repeat(4)
    signs = torch.tensor([1.0, -1.0]).repeat_interleave(16)
    w = (values * signs * 0.75).reshape(2, 16)  # block scale 0.75 * amax-derived global
    w = torch.cat([w, w], dim=1)
    restored = nvfp4.dequantize(nvfp4.quantize(w), torch.float32)
    torch.testing.assert_close(restored, w, rtol=1e-6, atol=1e-6)


def test_quantize_error_is_bounded_by_the_grid():
    torch.manual_seed(0)
    w = torch.randn(2, 8, 64)
    q = nvfp4.quantize(w)
    assert q.packed.shape == (2, 8, 32) and q.scales.shape == (2, 8, 4) and q.global_scale.shape == (2,)
    err = (nvfp4.dequantize(q, torch.float32) - w).abs()
    block_amax = w.abs().unflatten(-1, (-1, 16)).amax(-1, keepdim=True)
    # the widest E2M1 step is 2 of 6, so the error stays within a sixth of the block's amax (plus fp8 scale rounding)
    assert (err.unflatten(-1, (-1, 16)) <= block_amax / 6 * 1.07 + 1e-6).all()


def _quantised_experts(num_experts, latent, ffn, device):
    w_up = torch.randn(num_experts, ffn, latent) / latent**0.5
    w_down = torch.randn(num_experts, latent, ffn) / ffn**0.5
    q_up, q_down = nvfp4.quantize(w_up), nvfp4.quantize(w_down)
    move = lambda q: nvfp4.NVFP4Weight(q.packed.to(device), q.scales.to(device), q.global_scale.to(device))  # noqa: E731
    return move(q_up), move(q_down)


def _check(tokens, num_experts, latent, ffn, device, config=None, expert_start=0, total_experts=None):
    torch.manual_seed(tokens)
    x = torch.randn(tokens, latent, device=device).to(torch.bfloat16)
    q_up, q_down = _quantised_experts(num_experts, latent, ffn, device)
    logits = torch.randn(tokens, total_experts or num_experts, device=device)
    weights, ids = torch_ops.moe_route(logits, None, 3, 1, 1, True, 5.0)
    out = triton_nvfp4.routed_experts_nvfp4(x, q_up, q_down, weights, ids, expert_start, config=config)
    ref = torch_ops.routed_experts(x, nvfp4.dequantize(q_up), nvfp4.dequantize(q_down), weights, ids, expert_start)
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.float().abs().max().item())


@TINY_ORDERS
@pytest.mark.parametrize("tokens", [1, 7])
def test_w4a16_experts_match_dequantised_reference(device, tokens, config):
    _check(tokens, num_experts=5, latent=32, ffn=64, device=device, config=config)


def test_w4a16_experts_skip_other_ranks_experts(device):
    _check(4, num_experts=3, latent=32, ffn=32, device=device, config=TINY, expert_start=2, total_experts=6)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 64, 512])
def test_w4a16_experts_at_ultra_width(tokens):
    _check(tokens, num_experts=16, latent=2048, ffn=5120, device="cuda")


@pytest.mark.parametrize("tokens,k", [(1, 64), (9, 64), (5, 48)])  # 48: K not a multiple of the tile's 32
def test_w4a16_linear_matches_dequantised_reference(device, tokens, k):
    """linear_nvfp4 (a one-expert grouped GEMM) and the reference table entry agree with x @ dequant(W)^T."""
    torch.manual_seed(tokens)
    q = nvfp4.quantize(torch.randn(48, k) / 8)
    weight = nvfp4.NVFP4Weight(q.packed.to(device), q.scales.to(device), q.global_scale.to(device))
    x = torch.randn(tokens, k, device=device).to(torch.bfloat16)
    ref = x.float() @ nvfp4.dequantize(weight, torch.float32).T
    out = triton_nvfp4.linear_nvfp4(x, weight, config=TINY)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())
    torch.testing.assert_close(torch_ops.linear_nvfp4(x.float(), weight).float(), ref, rtol=1e-5, atol=1e-5)


def test_reference_nvfp4_experts_equal_the_dense_reference_on_dequantised_weights():
    torch.manual_seed(0)
    q_up, q_down = _quantised_experts(4, 32, 48, "cpu")
    x = torch.randn(6, 32)
    weights, ids = torch_ops.moe_route(torch.randn(6, 8), None, 2, 1, 1, True, 1.0)
    out = torch_ops.routed_experts_nvfp4(x, q_up, q_down, weights, ids, 4)  # this rank holds experts 4..7
    ref = torch_ops.routed_experts(x, nvfp4.dequantize(q_up, torch.float32), nvfp4.dequantize(q_down, torch.float32), weights, ids, 4)
    assert out.abs().max() > 0
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@TINY_ORDERS
def test_w4a16_decodes_every_code_and_scale_exactly(device, config):
    """Every byte (two E2M1 codes) under every finite E4M3 scale, subnormals included: the kernel's
    bit-moving decode equals the reference's table lookup (fp32 activations, so the only error
    left is the order of summation)."""
    scales = torch.tensor([b for b in range(256) if b & 127 != 127], dtype=torch.uint8)  # not the NaNs
    n, k = 2 * 254, 256 * 2 // 16 * 16  # each row: all 256 bytes; rows cycle through the scales
    packed = torch.arange(256, dtype=torch.uint8).repeat(n, 1)
    row_scales = scales.repeat(2)[:, None].expand(n, k // 16).contiguous()
    weight = nvfp4.NVFP4Weight(packed.to(device), row_scales.to(device), torch.tensor(0.37, device=device))
    x = torch.randn(3, k, device=device)
    ref = x.double() @ nvfp4.dequantize(weight, torch.float64).T
    out = triton_nvfp4.linear_nvfp4(x, weight, config=config)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
