"""PyTorch references for the ops listed in `kernels/__init__.py` (shapes and contracts there).

Written for clarity and exactness, not speed: per-sequence Python loops over the batch,
fp32 math wherever the model keeps fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nemodeploy.engine.kernels import nvfp4
from nemodeploy.engine.kernels.nvfp4 import NVFP4Weight


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * h).to(x.dtype)


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    h = x.float() * F.silu(z.float())
    groups = h.view(*h.shape[:-1], -1, group_size)
    groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + eps)
    return weight * groups.view_as(h).to(x.dtype)


def _conv_windows(states: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """states [B, C, K-1] + x [B, C, L] -> (silu(conv) [B, C, L], window [B, C, K-1+L])."""
    window = torch.cat([states.to(x.dtype), x], dim=-1)
    out = F.conv1d(window.to(weight.dtype), weight.unsqueeze(1), bias, groups=weight.shape[0])
    return F.silu(out).to(x.dtype), window


def causal_conv1d_varlen(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_states: torch.Tensor,
    query_start_loc: torch.Tensor,
    state_indices: torch.Tensor,
    has_initial_state: torch.Tensor,
) -> torch.Tensor:
    out = torch.empty_like(x)
    starts = query_start_loc.tolist()
    for b, slot in enumerate(state_indices.tolist()):
        lo, hi = starts[b], starts[b + 1]
        state = conv_states[slot] if bool(has_initial_state[b]) else torch.zeros_like(conv_states[slot])
        y, window = _conv_windows(state[None], x[lo:hi].T[None], weight, bias)
        out[lo:hi] = y[0].T
        conv_states[slot] = window[0, :, hi - lo :].to(conv_states.dtype)
    return out


def causal_conv1d_update(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_states: torch.Tensor,
    state_indices: torch.Tensor,
    intermediate_states: torch.Tensor | None = None,
) -> torch.Tensor:
    width = conv_states.shape[-1]
    seq_len = x.shape[1]
    y, window = _conv_windows(conv_states[state_indices], x.transpose(1, 2), weight, bias)
    if intermediate_states is not None:
        # the state after token j is the window's entries j+1 .. j+K-1
        per_token = window.unfold(-1, width, 1)[:, :, 1:]  # [B, C, L, K-1]
        intermediate_states.copy_(per_token.permute(0, 2, 1, 3))
    conv_states[state_indices] = window[:, :, seq_len:].to(conv_states.dtype)
    return y.transpose(1, 2)


def _discretize_dt(dt: torch.Tensor, dt_bias: torch.Tensor, dt_limit: tuple[float, float]) -> torch.Tensor:
    return F.softplus(dt.float() + dt_bias.float()).clamp(dt_limit[0], dt_limit[1])


def _heads_from_groups(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[..., G, N] -> [..., H, N]: head h reads group h // (H // G)."""
    return t.float().repeat_interleave(num_heads // t.shape[-2], dim=-2)


def _ssd_one_sequence(x, dt, A, B, C, chunk_size, state):
    """Chunked SSD for one sequence. x [L, H, P], dt [L, H] (discretized), B/C [L, H, N], state [H, P, N].

    Within a chunk the output is a masked "attention" C_i . B_j * exp(a_i - a_j) over x_j dt_j;
    across chunks the state is carried by the recurrence state <- state * exp(sum a) + chunk_state.
    """
    length = x.shape[0]
    pad = (-length) % chunk_size
    # padded positions get dt = 0: no input, no decay, so the final state is unaffected
    x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 1) + (0, pad)) for t in (x, dt, B, C))
    n_chunks = x.shape[0] // chunk_size
    x, dt, B, C = (t.reshape(n_chunks, chunk_size, *t.shape[1:]) for t in (x, dt, B, C))
    xdt = x * dt[..., None]
    a_cum = torch.cumsum(dt * A, dim=1)  # [c, Q, H]
    seg = a_cum[:, :, None, :] - a_cum[:, None, :, :]  # [c, i, j, H]
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(seg.masked_fill(~causal[None, :, :, None], -torch.inf))
    scores = torch.einsum("cihn,cjhn->cijh", C, B) * decay
    y = torch.einsum("cijh,cjhp->cihp", scores, xdt)
    decay_to_end = torch.exp(a_cum[:, -1:, :] - a_cum)  # [c, Q, H]
    chunk_states = torch.einsum("cjhn,cjh,cjhp->chpn", B, decay_to_end, xdt)
    for c in range(n_chunks):
        y[c] += torch.einsum("ihn,hpn->ihp", C[c], state) * torch.exp(a_cum[c])[..., None]
        state = state * torch.exp(a_cum[c, -1])[:, None, None] + chunk_states[c]
    return y.reshape(-1, *y.shape[2:])[:length], state


def ssd_chunk_scan_varlen(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    chunk_size: int,
    dt_limit: tuple[float, float],
    ssm_states: torch.Tensor,
    query_start_loc: torch.Tensor,
    state_indices: torch.Tensor,
    has_initial_state: torch.Tensor,
) -> torch.Tensor:
    num_heads = x.shape[1]
    dt = _discretize_dt(dt, dt_bias, dt_limit)
    B, C = _heads_from_groups(B, num_heads), _heads_from_groups(C, num_heads)
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    starts = query_start_loc.tolist()
    for b, slot in enumerate(state_indices.tolist()):
        lo, hi = starts[b], starts[b + 1]
        state = ssm_states[slot].float() if bool(has_initial_state[b]) else torch.zeros_like(ssm_states[slot], dtype=torch.float32)
        y_seq, final = _ssd_one_sequence(x[lo:hi].float(), dt[lo:hi], A.float(), B[lo:hi], C[lo:hi], chunk_size, state)
        y[lo:hi] = y_seq + D.float()[:, None] * x[lo:hi].float()
        ssm_states[slot] = final.to(ssm_states.dtype)
    return y


def selective_state_update(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    dt_bias: torch.Tensor,
    dt_limit: tuple[float, float],
    ssm_states: torch.Tensor,
    state_indices: torch.Tensor,
    intermediate_states: torch.Tensor | None = None,
) -> torch.Tensor:
    num_heads = x.shape[2]
    dt = _discretize_dt(dt, dt_bias, dt_limit)  # [B, L, H]
    B, C = _heads_from_groups(B, num_heads), _heads_from_groups(C, num_heads)
    xf = x.float()
    state = ssm_states[state_indices].float()
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A.float())[..., None, None]
        state = state * decay + (dt[:, t, :, None] * xf[:, t])[..., None] * B[:, t, :, None, :]
        y[:, t] = torch.einsum("bhpn,bhn->bhp", state, C[:, t]) + D.float()[:, None] * xf[:, t]
        if intermediate_states is not None:
            intermediate_states[:, t] = state.to(intermediate_states.dtype)
    ssm_states[state_indices] = state.to(ssm_states.dtype)
    return y


def moe_route(
    router_logits: torch.Tensor,
    correction_bias: torch.Tensor | None,
    top_k: int,
    n_group: int,
    topk_group: int,
    renormalize: bool,
    routed_scaling_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = router_logits.float().sigmoid()
    choice = scores if correction_bias is None else scores + correction_bias.float()
    if n_group > 1:
        grouped = choice.view(choice.shape[0], n_group, -1)
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros_like(group_scores, dtype=torch.bool)
        keep.scatter_(1, group_scores.topk(topk_group, dim=-1).indices, True)
        choice = grouped.masked_fill(~keep[..., None], -torch.inf).view_as(choice)
    ids = choice.topk(top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return weights * routed_scaling_factor, ids


def routed_experts(
    x: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    expert_start: int,
) -> torch.Tensor:
    return _routed_experts(x, lambda e: w_up[e], lambda e: w_down[e], w_up.shape[0], weights, ids, expert_start)


def routed_experts_nvfp4(
    x: torch.Tensor,
    w_up: NVFP4Weight,
    w_down: NVFP4Weight,
    weights: torch.Tensor,
    ids: torch.Tensor,
    expert_start: int,
) -> torch.Tensor:
    """routed_experts on NVFP4 weights, dequantizing only the experts some token is sent to."""
    up, down = (lambda e: nvfp4.dequantize(w_up.expert(e), x.dtype)), (lambda e: nvfp4.dequantize(w_down.expert(e), x.dtype))
    return _routed_experts(x, up, down, w_up.shape[0], weights, ids, expert_start)


def _routed_experts(x, up_of, down_of, num_local: int, weights, ids, expert_start: int) -> torch.Tensor:
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    local = ids - expert_start
    for e in torch.unique(local[(local >= 0) & (local < num_local)]).tolist():
        token, slot = torch.where(local == e)
        h = torch.relu(F.linear(x[token], up_of(e))).square()
        h = F.linear(h, down_of(e)) * weights[token, slot, None]
        out.index_add_(0, token, h.float())
    return out.to(x.dtype)


def linear_nvfp4(x: torch.Tensor, weight: NVFP4Weight) -> torch.Tensor:
    return F.linear(x, nvfp4.dequantize(weight, x.dtype))


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    k_cache.view(-1, *k_cache.shape[2:])[slot_mapping] = k.to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slot_mapping] = v.to(v_cache.dtype)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    block_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = q.shape[1] // kv_heads
    out = torch.empty_like(q)
    starts = query_start_loc.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        lo, hi = starts[b], starts[b + 1]
        blocks = block_tables[b, : -(-seq_len // block_size)].long()
        k = k_cache[blocks].flatten(0, 1)[:seq_len].to(q.dtype).repeat_interleave(group, dim=1)
        v = v_cache[blocks].flatten(0, 1)[:seq_len].to(q.dtype).repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[lo:hi], k) * scale
        q_pos = torch.arange(seq_len - (hi - lo), seq_len, device=q.device)
        visible = torch.arange(seq_len, device=q.device)[None, :] <= q_pos[:, None]
        probs = scores.masked_fill(~visible, -torch.inf).softmax(-1, dtype=torch.float32).to(q.dtype)
        out[lo:hi] = torch.einsum("hqk,khd->qhd", probs, v)
    return out
