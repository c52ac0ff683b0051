"""Mamba-2 in Triton: causal conv1d (prefill + decode update), SSD chunked scan (prefill),
selective state update (decode), gated grouped RMSNorm. Contracts: ``kernels/__init__.py``.

State stays fp32 in registers across tokens and chunks; activations are bf16. Every kernel
reads its slot through ``state_indices`` so the state pool is updated in place.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from nemodeploy.engine.kernels.triton_moe import dot_args


@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus uses threshold 20 the same way
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


# ---------------------------------------------------------------- gated grouped RMSNorm


@triton.jit
def _gated_rms_norm_kernel(x_ptr, z_ptr, w_ptr, out_ptr, D, group_size, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    cols = group * group_size + tl.arange(0, BLOCK)
    ok = tl.arange(0, BLOCK) < group_size
    x = tl.load(x_ptr + row * D + cols, mask=ok, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + row * D + cols, mask=ok, other=0.0).to(tl.float32)
    h = x * z * tl.sigmoid(z)
    h = h * tl.rsqrt(tl.sum(h * h, axis=0) / group_size + eps)
    # The reference rounds to the activation dtype before the weight multiply; so do we.
    h = h.to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * D + cols, (h * w).to(out_ptr.dtype.element_ty), mask=ok)


def gated_rms_norm(x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    x, z = x.contiguous(), z.contiguous()
    rows, dim = x.reshape(-1, x.shape[-1]).shape
    out = torch.empty_like(x)
    if rows:
        _gated_rms_norm_kernel[(rows, dim // group_size)](
            x, z, weight.contiguous(), out, dim, group_size, eps,
            BLOCK=triton.next_power_of_2(group_size), num_warps=8 if group_size >= 1024 else 4,
        )
    return out


# ---------------------------------------------------------------- causal conv1d (width 4)

WIDTH = 4  # Nemotron-H conv_kernel; the kernels keep the K-1 = 3 past inputs in registers


def _check_width(weight: torch.Tensor) -> None:
    if weight.shape[1] != WIDTH:
        raise ValueError(f"the Triton conv1d is written for width {WIDTH}, got {weight.shape[1]}")


@triton.jit
def _conv_varlen_kernel(
    x_ptr, w_ptr, bias_ptr, states_ptr, out_ptr,
    seq_of_token_ptr, starts_ptr, slots_ptr, has_init_ptr,
    T, C, stride_ss, stride_sc,
    HAS_BIAS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    t_ok = tokens < T
    c_ok = chans < C
    seq = tl.load(seq_of_token_ptr + tokens, mask=t_ok, other=0)
    start = tl.load(starts_ptr + seq, mask=t_ok, other=0)
    slot = tl.load(slots_ptr + seq, mask=t_ok, other=0).to(tl.int64)
    has_init = tl.load(has_init_ptr + seq, mask=t_ok, other=0) != 0
    acc = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + chans, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    for j in tl.static_range(4):
        pos = tokens - (3 - j)
        in_seq = (pos >= start)[:, None] & t_ok[:, None] & c_ok[None, :]
        from_x = tl.load(x_ptr + pos.to(tl.int64)[:, None] * C + chans[None, :], mask=in_seq, other=0.0)
        # positions before the sequence start read the slot's state (oldest first)
        state_pos = 3 + pos - start
        from_state = tl.load(
            states_ptr + slot[:, None] * stride_ss + chans[None, :] * stride_sc + state_pos[:, None],
            mask=(~in_seq) & (has_init & t_ok)[:, None] & c_ok[None, :], other=0.0,
        )
        value = tl.where(in_seq, from_x.to(tl.float32), from_state.to(tl.float32))
        acc += value * tl.load(w_ptr + chans * 4 + j, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    out = acc * tl.sigmoid(acc)
    tl.store(out_ptr + tokens.to(tl.int64)[:, None] * C + chans[None, :], out.to(out_ptr.dtype.element_ty),
             mask=t_ok[:, None] & c_ok[None, :])


@triton.jit
def _conv_save_state_kernel(
    x_ptr, states_ptr, starts_ptr, slots_ptr, has_init_ptr, C, stride_ss, stride_sc,
    BLOCK_C: tl.constexpr,
):
    """new state = the last 3 entries of [old state | the sequence's inputs]."""
    seq = tl.program_id(0)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = chans < C
    start = tl.load(starts_ptr + seq)
    length = tl.load(starts_ptr + seq + 1) - start
    slot = tl.load(slots_ptr + seq).to(tl.int64)
    # a vector, not a scalar: the interpreter rejects scalar & vector load masks
    has_init = (tl.zeros([BLOCK_C], dtype=tl.int32) + tl.load(has_init_ptr + seq)) != 0
    base = states_ptr + slot * stride_ss + chans * stride_sc
    old0 = tl.load(base + 0, mask=c_ok & has_init, other=0.0)
    old1 = tl.load(base + 1, mask=c_ok & has_init, other=0.0)
    old2 = tl.load(base + 2, mask=c_ok & has_init, other=0.0)
    for j in tl.static_range(3):
        window_pos = length + j  # index into [old0, old1, old2, x_0, ..., x_{len-1}]
        x_val = tl.load(x_ptr + (start + window_pos - 3).to(tl.int64) * C + chans,
                        mask=c_ok & (window_pos + tl.zeros([BLOCK_C], dtype=tl.int32) >= 3), other=0.0)
        old = tl.where(window_pos == 0, old0, tl.where(window_pos == 1, old1, old2))
        value = tl.where(window_pos >= 3, x_val.to(tl.float32), old.to(tl.float32))
        tl.store(base + j, value.to(states_ptr.dtype.element_ty), mask=c_ok)


def causal_conv1d_varlen(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_states: torch.Tensor,
    query_start_loc: torch.Tensor,
    state_indices: torch.Tensor,
    has_initial_state: torch.Tensor,
) -> torch.Tensor:
    _check_width(weight)
    x = x.contiguous()
    tokens, channels = x.shape
    out = torch.empty_like(x)
    num_seqs = state_indices.shape[0]
    if tokens == 0 or num_seqs == 0:
        return out
    starts = query_start_loc.to(torch.int32).contiguous()
    seq_of_token = torch.searchsorted(starts[1:], torch.arange(tokens, device=x.device, dtype=torch.int32),
                                      right=True).to(torch.int32)
    has_init = has_initial_state.to(torch.int32).contiguous()
    slots = state_indices.contiguous()
    weight = weight.contiguous()
    block_t, block_c = 32, 64
    _conv_varlen_kernel[(triton.cdiv(tokens, block_t), triton.cdiv(channels, block_c))](
        x, weight, bias if bias is not None else weight, conv_states, out,
        seq_of_token, starts, slots, has_init,
        tokens, channels, conv_states.stride(0), conv_states.stride(1),
        HAS_BIAS=bias is not None, BLOCK_T=block_t, BLOCK_C=block_c,
    )
    # after the conv: the state is read by the conv kernel above and overwritten here
    _conv_save_state_kernel[(num_seqs, triton.cdiv(channels, 256))](
        x, conv_states, starts, slots, has_init, channels, conv_states.stride(0), conv_states.stride(1),
        BLOCK_C=256,
    )
    return out


@triton.jit
def _conv_update_kernel(
    x_ptr, w_ptr, bias_ptr, states_ptr, slots_ptr, out_ptr, inter_ptr,
    L, C, stride_ss, stride_sc,
    HAS_BIAS: tl.constexpr, SAVE_INTERMEDIATE: tl.constexpr, BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    chans = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ok = chans < C
    slot = tl.load(slots_ptr + b).to(tl.int64)
    base = states_ptr + slot * stride_ss + chans * stride_sc
    s0 = tl.load(base + 0, mask=ok, other=0.0).to(tl.float32)
    s1 = tl.load(base + 1, mask=ok, other=0.0).to(tl.float32)
    s2 = tl.load(base + 2, mask=ok, other=0.0).to(tl.float32)
    w0 = tl.load(w_ptr + chans * 4 + 0, mask=ok, other=0.0).to(tl.float32)
    w1 = tl.load(w_ptr + chans * 4 + 1, mask=ok, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + chans * 4 + 2, mask=ok, other=0.0).to(tl.float32)
    w3 = tl.load(w_ptr + chans * 4 + 3, mask=ok, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_C], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + chans, mask=ok, other=0.0).to(tl.float32)
    for t in range(L):
        row = (b * L + t) * C
        # the window is kept in the activation dtype, as the reference's cat() does
        x = tl.load(x_ptr + row + chans, mask=ok, other=0.0).to(tl.float32)
        acc = bias + s0 * w0 + s1 * w1 + s2 * w2 + x * w3
        tl.store(out_ptr + row + chans, (acc * tl.sigmoid(acc)).to(out_ptr.dtype.element_ty), mask=ok)
        s0, s1, s2 = s1, s2, x
        if SAVE_INTERMEDIATE:
            inter = inter_ptr + (row + chans) * 3
            tl.store(inter + 0, s0.to(inter_ptr.dtype.element_ty), mask=ok)
            tl.store(inter + 1, s1.to(inter_ptr.dtype.element_ty), mask=ok)
            tl.store(inter + 2, s2.to(inter_ptr.dtype.element_ty), mask=ok)
    tl.store(base + 0, s0.to(states_ptr.dtype.element_ty), mask=ok)
    tl.store(base + 1, s1.to(states_ptr.dtype.element_ty), mask=ok)
    tl.store(base + 2, s2.to(states_ptr.dtype.element_ty), mask=ok)


def causal_conv1d_update(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    conv_states: torch.Tensor,
    state_indices: torch.Tensor,
    intermediate_states: torch.Tensor | None = None,
) -> torch.Tensor:
    _check_width(weight)
    x = x.contiguous()
    batch, length, channels = x.shape
    out = torch.empty_like(x)
    if intermediate_states is not None and not intermediate_states.is_contiguous():
        raise ValueError("intermediate_states must be contiguous [B, L, C, K-1]")
    if batch == 0:
        return out
    weight = weight.contiguous()
    block_c = 256
    _conv_update_kernel[(batch, triton.cdiv(channels, block_c))](
        x, weight, bias if bias is not None else weight, conv_states, state_indices.contiguous(), out,
        intermediate_states if intermediate_states is not None else out,
        length, channels, conv_states.stride(0), conv_states.stride(1),
        HAS_BIAS=bias is not None, SAVE_INTERMEDIATE=intermediate_states is not None, BLOCK_C=block_c,
    )
    return out


# ---------------------------------------------------------------- selective state update (decode)


@triton.jit
def _state_update_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr, states_ptr, slots_ptr, y_ptr, inter_ptr,
    L, H, G, P, N, dt_lo, dt_hi,
    stride_ss, stride_sh,
    SAVE_INTERMEDIATE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per (sequence, head, block of head dims): the fp32 state tile is read once,
    advanced through the L new tokens in registers and written once."""
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    ps = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    ns = tl.arange(0, BLOCK_N)
    p_ok = ps < P
    n_ok = ns < N
    g = h // (H // G)
    slot = tl.load(slots_ptr + b).to(tl.int64)
    state_ptrs = states_ptr + slot * stride_ss + h * stride_sh + ps[:, None] * N + ns[None, :]
    tile_ok = p_ok[:, None] & n_ok[None, :]
    state = tl.load(state_ptrs, mask=tile_ok, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + h).to(tl.float32)
    D = tl.load(D_ptr + h).to(tl.float32)
    dt_bias = tl.load(dt_bias_ptr + h).to(tl.float32)
    for t in range(L):
        token = b * L + t
        x = tl.load(x_ptr + (token * H + h) * P + ps, mask=p_ok, other=0.0).to(tl.float32)
        dt = _softplus(tl.load(dt_ptr + token * H + h).to(tl.float32) + dt_bias)
        dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
        Bv = tl.load(B_ptr + (token * G + g) * N + ns, mask=n_ok, other=0.0).to(tl.float32)
        Cv = tl.load(C_ptr + (token * G + g) * N + ns, mask=n_ok, other=0.0).to(tl.float32)
        state = state * tl.exp(dt * A) + (dt * x)[:, None] * Bv[None, :]
        y = tl.sum(state * Cv[None, :], axis=1) + D * x
        tl.store(y_ptr + (token * H + h) * P + ps, y, mask=p_ok)
        if SAVE_INTERMEDIATE:
            inter = inter_ptr + ((token * H + h) * P + ps[:, None]) * N + ns[None, :]
            tl.store(inter, state.to(inter_ptr.dtype.element_ty), mask=tile_ok)
    tl.store(state_ptrs, state.to(states_ptr.dtype.element_ty), mask=tile_ok)


def state_update_block_p(batch: int, heads: int, head_dim: int) -> int:
    """Small batches split each head over several programs so all SMs stream state. Measured on
    an H200 at Ultra's widths (2026-11-30): 16 rows best at batch 1 (4 rows, vLLM's choice, ran
    12% slower), 8 to 64 rows within 2% of each other at batch 16 and 64."""
    block = 16 if batch * heads < 2048 else 64
    return min(block, triton.next_power_of_2(head_dim))


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
    block_p: int | None = None,
) -> torch.Tensor:
    batch, length, heads, head_dim = x.shape
    groups, state_size = B.shape[-2:]
    if ssm_states.stride(2) != state_size or ssm_states.stride(3) != 1:
        raise ValueError("each head's [P, N] state must be contiguous")
    if intermediate_states is not None and not intermediate_states.is_contiguous():
        raise ValueError("intermediate_states must be contiguous [B, L, H, P, N]")
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    if batch == 0 or length == 0:
        return y
    block_p = block_p or state_update_block_p(batch, heads, head_dim)
    _state_update_kernel[(batch, heads, triton.cdiv(head_dim, block_p))](
        x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), D.contiguous(),
        dt_bias.contiguous(), ssm_states, state_indices.contiguous(), y,
        intermediate_states if intermediate_states is not None else y,
        length, heads, groups, head_dim, state_size, float(dt_limit[0]), float(dt_limit[1]),
        ssm_states.stride(0), ssm_states.stride(1),
        SAVE_INTERMEDIATE=intermediate_states is not None, BLOCK_P=block_p,
        BLOCK_N=triton.next_power_of_2(state_size), num_warps=4,
    )
    return y


# ---------------------------------------------------------------- SSD chunked scan (prefill)
#
# Five kernels over chunks that never cross a sequence boundary:
#   1. _ssd_dt_kernel      dt = clamp(softplus(dt + dt_bias)), dA_cum = cumsum(dt * A) per chunk
#   2. _ssd_chunk_state    each chunk's own contribution to the state, [P, N] per head
#   3. _ssd_state_passing  per sequence, carries the state across its chunks (fp32), writes the
#                          state entering each chunk and the final state to the slot
#   4. _ssd_bmm            C B^T within each chunk, per group
#   5. _ssd_chunk_scan     y = causal (C B^T * decay * dt) x within the chunk
#                          + exp(dA_cum) * C . state_in + D x


@triton.jit
def _ssd_dt_kernel(
    dt_ptr, dt_bias_ptr, A_ptr, chunk_start_ptr, chunk_len_ptr, dt_out_ptr, dA_cum_ptr,
    H, dt_lo, dt_hi, CHUNK: tl.constexpr,
):
    c = tl.program_id(0)
    h = tl.program_id(1)
    start = tl.load(chunk_start_ptr + c)
    length = tl.load(chunk_len_ptr + c)
    ls = tl.arange(0, CHUNK)
    ok = ls < length
    dt = tl.load(dt_ptr + (start + ls).to(tl.int64) * H + h, mask=ok, other=0.0).to(tl.float32)
    dt = _softplus(dt + tl.load(dt_bias_ptr + h).to(tl.float32))
    dt = tl.where(ok, tl.minimum(tl.maximum(dt, dt_lo), dt_hi), 0.0)  # padding: no input, no decay
    out = (c * H + h) * CHUNK + ls
    tl.store(dt_out_ptr + out, dt)
    tl.store(dA_cum_ptr + out, tl.cumsum(dt * tl.load(A_ptr + h).to(tl.float32), axis=0))


@triton.jit
def _ssd_chunk_state_kernel(
    x_ptr, B_ptr, dt_ptr, dA_cum_ptr, chunk_start_ptr, chunk_len_ptr, states_ptr,
    H, G, P, N, DOT: tl.constexpr, PRECISION: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    c = tl.program_id(0)
    h = tl.program_id(1)
    ps = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    ns = tl.arange(0, BLOCK_N)
    g = h // (H // G)
    start = tl.load(chunk_start_ptr + c)
    length = tl.load(chunk_len_ptr + c)
    meta = (c * H + h) * CHUNK
    dA_last = tl.load(dA_cum_ptr + meta + CHUNK - 1)
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for l0 in range(0, CHUNK, BLOCK_L):
        ls = l0 + tl.arange(0, BLOCK_L)
        ok = ls < length
        rows = (start + ls).to(tl.int64)
        x = tl.load(x_ptr + (rows[None, :] * H + h) * P + ps[:, None], mask=ok[None, :] & (ps[:, None] < P), other=0.0)
        Bm = tl.load(B_ptr + (rows[:, None] * G + g) * N + ns[None, :], mask=ok[:, None] & (ns[None, :] < N), other=0.0)
        scale = tl.load(dt_ptr + meta + ls) * tl.exp(dA_last - tl.load(dA_cum_ptr + meta + ls))
        xs = x.to(tl.float32) * scale[None, :]
        acc = tl.dot(xs.to(DOT), Bm.to(DOT), acc, input_precision=PRECISION)
    out = states_ptr + ((c * H + h) * P + ps[:, None]).to(tl.int64) * N + ns[None, :]
    tl.store(out, acc, mask=(ps[:, None] < P) & (ns[None, :] < N))


@triton.jit
def _ssd_state_passing_kernel(
    chunk_states_ptr, dA_cum_ptr, states_in_ptr, pool_ptr,
    first_chunk_ptr, slots_ptr, has_init_ptr,
    H, PN, stride_ss, stride_sh, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):
    seq = tl.program_id(0)
    h = tl.program_id(1)
    offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < PN
    slot = tl.load(slots_ptr + seq).to(tl.int64)
    init = (tl.zeros([BLOCK], dtype=tl.int32) + tl.load(has_init_ptr + seq)) != 0
    pool = pool_ptr + slot * stride_ss + h * stride_sh + offs
    state = tl.load(pool, mask=ok & init, other=0.0).to(tl.float32)
    for c in range(tl.load(first_chunk_ptr + seq), tl.load(first_chunk_ptr + seq + 1)):
        at = (c * H + h).to(tl.int64) * PN + offs
        tl.store(states_in_ptr + at, state, mask=ok)
        decay = tl.exp(tl.load(dA_cum_ptr + (c * H + h) * CHUNK + CHUNK - 1))
        state = state * decay + tl.load(chunk_states_ptr + at, mask=ok, other=0.0)
    tl.store(pool, state.to(pool_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _ssd_bmm_kernel(
    C_ptr, B_ptr, chunk_start_ptr, chunk_len_ptr, cb_ptr,
    G, N, DOT: tl.constexpr, PRECISION: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """C B^T within each chunk, once per group rather than once per head (the H / G heads of a
    group share B and C): one program per (chunk, group, row block x column block). Blocks above
    the diagonal, which the causal scan never reads, are skipped."""
    blocks: tl.constexpr = CHUNK // BLOCK_L
    c = tl.program_id(0)
    g = tl.program_id(1)
    l0 = tl.program_id(2) // blocks * BLOCK_L
    s0 = tl.program_id(2) % blocks * BLOCK_L
    if s0 > l0:
        return
    start = tl.load(chunk_start_ptr + c)
    length = tl.load(chunk_len_ptr + c)
    ls = l0 + tl.arange(0, BLOCK_L)
    ss = s0 + tl.arange(0, BLOCK_L)
    ns = tl.arange(0, BLOCK_N)
    Cm = tl.load(C_ptr + ((start + ls).to(tl.int64)[:, None] * G + g) * N + ns[None, :],
                 mask=(ls < length)[:, None] & (ns < N)[None, :], other=0.0)
    Bm = tl.load(B_ptr + ((start + ss).to(tl.int64)[None, :] * G + g) * N + ns[:, None],
                 mask=(ns < N)[:, None] & (ss < length)[None, :], other=0.0)
    cb = tl.dot(Cm.to(DOT), Bm.to(DOT), input_precision=PRECISION)
    tl.store(cb_ptr + ((c * G + g) * CHUNK + ls[:, None]).to(tl.int64) * CHUNK + ss[None, :], cb)


@triton.jit
def _ssd_chunk_scan_kernel(
    x_ptr, cb_ptr, C_ptr, D_ptr, dt_ptr, dA_cum_ptr, states_in_ptr, chunk_start_ptr, chunk_len_ptr, y_ptr,
    H, G, P, N, DOT: tl.constexpr, PRECISION: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per (chunk x row block, head, head-dim block)."""
    blocks_per_chunk: tl.constexpr = CHUNK // BLOCK_L
    c = tl.program_id(0) // blocks_per_chunk
    l0 = (tl.program_id(0) % blocks_per_chunk) * BLOCK_L
    h = tl.program_id(1)
    ps = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    ns = tl.arange(0, BLOCK_N)
    g = h // (H // G)
    start = tl.load(chunk_start_ptr + c)
    length = tl.load(chunk_len_ptr + c)
    if l0 >= length:
        return
    meta = (c * H + h) * CHUNK
    ls = l0 + tl.arange(0, BLOCK_L)
    l_ok = ls < length
    p_ok = ps < P
    n_ok = ns < N
    rows = (start + ls).to(tl.int64)
    Cm = tl.load(C_ptr + (rows[:, None] * G + g) * N + ns[None, :], mask=l_ok[:, None] & n_ok[None, :], other=0.0)
    dA_l = tl.load(dA_cum_ptr + meta + ls)
    # contribution of the state entering the chunk
    state = tl.load(states_in_ptr + ((c * H + h) * P + ps[None, :]).to(tl.int64) * N + ns[:, None],
                    mask=n_ok[:, None] & p_ok[None, :], other=0.0)  # [N, P]
    acc = tl.dot(Cm.to(DOT), state.to(DOT), input_precision=PRECISION) * tl.exp(dA_l)[:, None]
    # causal part within the chunk, source rows s <= l
    for s0 in range(0, l0 + BLOCK_L, BLOCK_L):
        ss = s0 + tl.arange(0, BLOCK_L)
        s_ok = ss < length
        srows = (start + ss).to(tl.int64)
        cb = tl.load(cb_ptr + ((c * G + g) * CHUNK + ls[:, None]).to(tl.int64) * CHUNK + ss[None, :])  # [L, S]
        dA_s = tl.load(dA_cum_ptr + meta + ss)
        dt_s = tl.load(dt_ptr + meta + ss)
        causal = ls[:, None] >= ss[None, :]
        # mask before exp so masked entries never overflow into inf * 0
        decay = tl.exp(tl.where(causal, dA_l[:, None] - dA_s[None, :], float("-inf")))
        weights = cb * decay * dt_s[None, :]
        xs = tl.load(x_ptr + (srows[:, None] * H + h) * P + ps[None, :], mask=s_ok[:, None] & p_ok[None, :], other=0.0)
        acc = tl.dot(weights.to(DOT), xs.to(DOT), acc, input_precision=PRECISION)
    x_l = tl.load(x_ptr + (rows[:, None] * H + h) * P + ps[None, :], mask=l_ok[:, None] & p_ok[None, :], other=0.0)
    acc += tl.load(D_ptr + h).to(tl.float32) * x_l.to(tl.float32)
    tl.store(y_ptr + (rows[:, None] * H + h) * P + ps[None, :], acc, mask=l_ok[:, None] & p_ok[None, :])


@dataclass(frozen=True)
class SSDChunks:
    """Every sequence split into chunks of chunk_size (the last one shorter), as int32 tensors.

    Built on the host (one sync on query_start_loc); build it once per batch with
    :func:`ssd_chunks` and pass it in to keep the scan itself free of syncs (CUDA graphs).
    """

    start: torch.Tensor  # [num_chunks] first token of each chunk
    length: torch.Tensor  # [num_chunks]
    first_of_seq: torch.Tensor  # [B + 1] chunk range of each sequence
    chunk_size: int


def ssd_chunks(query_start_loc: torch.Tensor, chunk_size: int) -> SSDChunks:
    starts = query_start_loc.tolist()
    chunk_start, chunk_len, first_chunk = [], [], [0]
    for lo, hi in zip(starts[:-1], starts[1:]):
        for s in range(lo, hi, chunk_size):
            chunk_start.append(s)
            chunk_len.append(min(chunk_size, hi - s))
        first_chunk.append(len(chunk_start))
    as_tensor = lambda v: torch.tensor(v, dtype=torch.int32, device=query_start_loc.device)  # noqa: E731
    return SSDChunks(as_tensor(chunk_start), as_tensor(chunk_len), as_tensor(first_chunk), chunk_size)


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
    block_l: int | None = None,
    chunks: SSDChunks | None = None,
) -> torch.Tensor:
    tokens, heads, head_dim = x.shape
    groups, state_size = B.shape[-2:]
    if chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size {chunk_size} must be a power of two")
    if ssm_states.stride(2) != state_size or ssm_states.stride(3) != 1:
        raise ValueError("each head's [P, N] state must be contiguous")
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    num_seqs = state_indices.shape[0]
    if tokens == 0 or num_seqs == 0:
        return y
    x, dt, B, C = x.contiguous(), dt.contiguous(), B.contiguous(), C.contiguous()
    chunks = chunks or ssd_chunks(query_start_loc, chunk_size)
    if chunks.chunk_size != chunk_size:
        raise ValueError(f"chunks were built for chunk_size {chunks.chunk_size}, not {chunk_size}")
    chunk_start, chunk_len, first_chunk = chunks.start, chunks.length, chunks.first_of_seq
    num_chunks = chunk_start.numel()
    f32 = dict(dtype=torch.float32, device=x.device)
    dt_chunks = torch.empty(num_chunks, heads, chunk_size, **f32)
    dA_cum = torch.empty(num_chunks, heads, chunk_size, **f32)
    chunk_states = torch.empty(num_chunks, heads, head_dim, state_size, **f32)
    states_in = torch.empty_like(chunk_states)
    block_n = triton.next_power_of_2(state_size)
    block_p = min(64, triton.next_power_of_2(head_dim))
    block_l = block_l or min(32, chunk_size)  # on an H200 at Ultra's widths 32 beat 64 by 9% (2026-11-30)
    if x.is_cuda:  # tl.dot on the GPU takes no operand dimension under 16
        if chunk_size < 16:
            raise ValueError(f"chunk_size {chunk_size} is under 16, the smallest tile tl.dot takes on a GPU")
        block_l, block_p = max(block_l, 16), max(block_p, 16)
    dot = dot_args(x)

    _ssd_dt_kernel[(num_chunks, heads)](
        dt, dt_bias.contiguous(), A.contiguous(), chunk_start, chunk_len, dt_chunks, dA_cum,
        heads, float(dt_limit[0]), float(dt_limit[1]), CHUNK=chunk_size,
    )
    _ssd_chunk_state_kernel[(num_chunks, heads, triton.cdiv(head_dim, block_p))](
        x, B, dt_chunks, dA_cum, chunk_start, chunk_len, chunk_states,
        heads, groups, head_dim, state_size, **dot,
        CHUNK=chunk_size, BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_L=block_l,
    )
    pn = head_dim * state_size
    block_pn = min(1024, triton.next_power_of_2(pn))
    _ssd_state_passing_kernel[(num_seqs, heads, triton.cdiv(pn, block_pn))](
        chunk_states, dA_cum, states_in, ssm_states,
        first_chunk, state_indices.contiguous(), has_initial_state.to(torch.int32).contiguous(),
        heads, pn, ssm_states.stride(0), ssm_states.stride(1), CHUNK=chunk_size, BLOCK=block_pn,
    )
    blocks = chunk_size // block_l
    cb = torch.empty(num_chunks, groups, chunk_size, chunk_size, **f32)
    _ssd_bmm_kernel[(num_chunks, groups, blocks * blocks)](
        C, B, chunk_start, chunk_len, cb, groups, state_size, **dot,
        CHUNK=chunk_size, BLOCK_L=block_l, BLOCK_N=block_n,
    )
    _ssd_chunk_scan_kernel[(num_chunks * blocks, heads, triton.cdiv(head_dim, block_p))](
        x, cb, C, D.contiguous(), dt_chunks, dA_cum, states_in, chunk_start, chunk_len, y,
        heads, groups, head_dim, state_size, **dot,
        CHUNK=chunk_size, BLOCK_L=block_l, BLOCK_P=block_p, BLOCK_N=block_n,
    )
    return y
