"""The hot ops of the Nemotron-H forward, behind one table so that faster versions drop in.

Every op has a PyTorch reference in `torch_ops.py` (the CPU path and the ground truth
the tests hold the others to). `get_kernels(device)` returns the table the model calls.

Drop-in point for faster kernels: on a CUDA device, if the module
`nemodeploy.engine.kernels.triton_ops` imports, its `KERNELS` dict (op name -> function
with the same signature as the reference below) replaces the matching entries; ops it
does not name keep the reference. `NEMODEPLOY_KERNELS=torch` forces the references.

Shapes (T = tokens in the flattened batch, B = sequences, S = Mamba slots in the pool,
H = Mamba heads, P = Mamba head dim, G = Mamba groups, N = SSM state size, C = conv
channels, K = conv kernel width, E = experts on this rank, k = experts per token):

- rms_norm(x [T, D], weight [D], eps) -> [T, D] in x's dtype; fp32 math, weight
  multiplied in fp32 before the cast back.
- gated_rms_norm(x [T, D], z [T, D], weight [D], group_size, eps) -> [T, D] in x's dtype;
  y = x * silu(z) in fp32, then RMSNorm over each group of `group_size` channels
  (norm after gate, as Nemotron-H does), then times weight.
- causal_conv1d_varlen(x [T, C], weight [C, K], bias [C] | None, conv_states [S, C, K-1],
  query_start_loc [B+1] int32, state_indices [B] int64, has_initial_state [B] bool)
  -> [T, C]: depthwise causal conv + SiLU per sequence, the window starting from
  conv_states[slot] (oldest first) where has_initial_state, else zeros; writes each
  sequence's last K-1 inputs back to conv_states[slot] (in place).
- causal_conv1d_update(x [B, L, C], weight, bias, conv_states [S, C, K-1],
  state_indices [B], intermediate_states [B, L, C, K-1] | None) -> [B, L, C]: the same
  for L new tokens of each sequence (decode L = 1, speculative verify L = k+1); when
  intermediate_states is given, writes the conv state after each of the L tokens.
- ssd_chunk_scan_varlen(x [T, H, P], dt [T, H], A [H] fp32, B [T, G, N], C [T, G, N],
  D [H], dt_bias [H], chunk_size, dt_limit (lo, hi), ssm_states [S, H, P, N],
  query_start_loc, state_indices, has_initial_state) -> y [T, H, P] fp32: Mamba-2 SSD
  for prefill; dt is raw (softplus(dt + dt_bias) then clamp to dt_limit happen inside);
  head h reads group h // (H // G); the start state is ssm_states[slot] where
  has_initial_state, else zeros; the final state is written back (in place, in the
  pool's dtype). y includes the D skip.
- selective_state_update(x [B, L, H, P], dt [B, L, H], A, B [B, L, G, N], C [B, L, G, N],
  D, dt_bias, dt_limit, ssm_states [S, H, P, N], state_indices [B],
  intermediate_states [B, L, H, P, N] | None) -> y [B, L, H, P] fp32: the recurrent
  form, token by token; same conventions as the scan.
- moe_route(router_logits [T, E_all] fp32, correction_bias [E_all] | None, top_k, n_group,
  topk_group, renormalize, routed_scaling_factor) -> (weights [T, k] fp32,
  ids [T, k] int64): sigmoid scores; the bias only picks the experts, the weights are the
  unbiased scores, renormalised (sum + 1e-20) when asked, times the scaling factor.
- routed_experts(x [T, Din], w_up [E, I, Din], w_down [E, Din, I], weights [T, k],
  ids [T, k], expert_start) -> [T, Din] in x's dtype: sum over the token's experts that
  live on this rank (ids in [expert_start, expert_start + E)) of
  weight * down(relu(up(x))^2); fp32 accumulation. Other experts contribute zero (their
  rank adds them in the all-reduce).
- routed_experts_nvfp4(x, w_up: NVFP4Weight, w_down: NVFP4Weight, weights, ids, expert_start):
  routed_experts with NVFP4 weights of logical shapes [E, I, Din] / [E, Din, I] (nvfp4.py);
  W4A16: the activations stay in x's dtype.
- linear_nvfp4(x [T, K], weight: NVFP4Weight of logical shape [N, K]) -> [T, N] in x's dtype.
- write_kv(k [T, Hkv, Dh], v [T, Hkv, Dh], k_cache [NB, BS, Hkv, Dh], v_cache,
  slot_mapping [T] int64): k_cache.view(-1, Hkv, Dh)[slot_mapping] = k (in place).
- paged_attention(q [T, Hq, Dh], k_cache, v_cache, block_tables [B, max_blocks] int32,
  query_start_loc [B+1], seq_lens [B] (cached + new tokens), scale) -> [T, Hq, Dh]:
  causal GQA over the pages; query i of a sequence with q_len new tokens sits at
  position seq_len - q_len + i and sees keys 0..that position; query head h reads KV
  head h // (Hq // Hkv).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable

import torch

from nemodeploy.engine.kernels import torch_ops

OP_NAMES = (
    "rms_norm",
    "gated_rms_norm",
    "causal_conv1d_varlen",
    "causal_conv1d_update",
    "ssd_chunk_scan_varlen",
    "selective_state_update",
    "moe_route",
    "routed_experts",
    "routed_experts_nvfp4",
    "linear_nvfp4",
    "write_kv",
    "paged_attention",
)


@dataclass(frozen=True)
class Kernels:
    rms_norm: Callable
    gated_rms_norm: Callable
    causal_conv1d_varlen: Callable
    causal_conv1d_update: Callable
    ssd_chunk_scan_varlen: Callable
    selective_state_update: Callable
    moe_route: Callable
    routed_experts: Callable
    routed_experts_nvfp4: Callable
    linear_nvfp4: Callable
    write_kv: Callable
    paged_attention: Callable


TORCH_KERNELS = Kernels(**{name: getattr(torch_ops, name) for name in OP_NAMES})


def get_kernels(device: torch.device | str) -> Kernels:
    """The op table for `device`: Triton ops on CUDA where available, references elsewhere."""
    if torch.device(device).type != "cuda" or os.environ.get("NEMODEPLOY_KERNELS") == "torch":
        return TORCH_KERNELS
    try:
        from nemodeploy.engine.kernels import triton_ops
    except ImportError:
        return TORCH_KERNELS
    unknown = set(triton_ops.KERNELS) - set(OP_NAMES)
    if unknown:
        raise ValueError(f"triton_ops.KERNELS names unknown ops {sorted(unknown)}")
    return replace(TORCH_KERNELS, **triton_ops.KERNELS)
