"""LatentMoE Triton kernels against the PyTorch references in torch_ops."""

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from nemodeploy.engine.kernels import torch_ops, triton_moe  # noqa: E402
from nemodeploy.engine.kernels.triton_moe import GemmConfig  # noqa: E402

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TINY = GemmConfig(block_m=16, block_n=16, block_k=16, num_warps=1, num_stages=1)


def _logits(tokens, experts, device):
    return torch.randn(tokens, experts, device=device) * 2


@pytest.mark.parametrize("with_bias", [False, True])
def test_route_matches_reference(device, with_bias):
    torch.manual_seed(0)
    logits = _logits(5, 64, device)
    bias = torch.randn(64, device=device) * 0.5 if with_bias else None
    weights, ids = triton_moe.moe_route(logits, bias, 6, 1, 1, True, 5.0)
    ref_weights, ref_ids = torch_ops.moe_route(logits, bias, 6, 1, 1, True, 5.0)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights)


def test_route_without_renormalisation(device):
    logits = _logits(3, 40, device)
    weights, ids = triton_moe.moe_route(logits, None, 5, 1, 1, False, 2.5)
    ref_weights, ref_ids = torch_ops.moe_route(logits, None, 5, 1, 1, False, 2.5)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights)


def test_align_groups_every_pair_once_in_expert_tiles(device):
    ids = torch.tensor([[3, 0], [3, 1], [0, 3]], device=device)
    groups = triton_moe.align_by_expert(ids, num_experts=4, block_m=4)
    rows = groups.sorted_pairs[: int(groups.num_padded)]
    real = rows[rows < groups.num_pairs]
    assert sorted(real.tolist()) == list(range(6))
    tile_of_row = torch.arange(rows.numel(), device=device) // 4
    for row, pair in zip(tile_of_row.tolist(), rows.tolist()):
        if pair < groups.num_pairs:
            assert groups.tile_expert[row] == ids.flatten()[pair]


def _experts(num_experts, latent, ffn, device, dtype=torch.bfloat16):
    w_up = (torch.randn(num_experts, ffn, latent, device=device) / latent**0.5).to(dtype)
    w_down = (torch.randn(num_experts, latent, ffn, device=device) / ffn**0.5).to(dtype)
    return w_up, w_down


def _close(out, ref):
    """bf16 hidden activations round differently from the reference's bf16 ops: compare
    against the output's scale, which still catches a wrong expert or weight."""
    ref = ref.float()
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())


@pytest.mark.parametrize("tokens,ffn", [(1, 48), (9, 48), (5, 40)])  # 40: the down projection's K is no tile multiple
def test_routed_experts_match_reference(device, tokens, ffn):
    torch.manual_seed(1)
    x = torch.randn(tokens, 32, device=device).to(torch.bfloat16)
    w_up, w_down = _experts(6, 32, ffn, device)
    weights, ids = torch_ops.moe_route(_logits(tokens, 6, device), None, 3, 1, 1, True, 5.0)
    out = triton_moe.routed_experts(x, w_up, w_down, weights, ids, 0, config=TINY)
    _close(out, torch_ops.routed_experts(x, w_up, w_down, weights, ids, 0))


def test_routed_experts_skip_other_ranks_experts(device):
    torch.manual_seed(2)
    x = torch.randn(4, 32, device=device).to(torch.bfloat16)
    w_up, w_down = _experts(3, 32, 32, device)  # this rank holds experts 3, 4, 5 of 8
    weights, ids = torch_ops.moe_route(_logits(4, 8, device), None, 3, 1, 1, True, 5.0)
    out = triton_moe.routed_experts(x, w_up, w_down, weights, ids, 3, config=TINY)
    _close(out, torch_ops.routed_experts(x, w_up, w_down, weights, ids, 3))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 64, 512])
def test_routed_experts_at_ultra_width(tokens):
    torch.manual_seed(3)
    x = torch.randn(tokens, 2048, device="cuda").to(torch.bfloat16)
    w_up, w_down = _experts(32, 2048, 5120, "cuda")
    logits = _logits(tokens, 32, "cuda")
    weights, ids = triton_moe.moe_route(logits, None, 8, 1, 1, True, 5.0)
    ref_weights, ref_ids = torch_ops.moe_route(logits, None, 8, 1, 1, True, 5.0)
    assert torch.equal(ids, ref_ids)
    out = triton_moe.routed_experts(x, w_up, w_down, weights, ids, 0)
    _close(out, torch_ops.routed_experts(x, w_up, w_down, weights, ids, 0))


@needs_cuda
@pytest.mark.gpu
def test_route_top22_of_512_on_gpu():
    logits = _logits(64, 512, "cuda")
    bias = torch.randn(512, device="cuda") * 0.1
    weights, ids = triton_moe.moe_route(logits, bias, 22, 1, 1, True, 5.0)
    ref_weights, ref_ids = torch_ops.moe_route(logits, bias, 22, 1, 1, True, 5.0)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_weights)
