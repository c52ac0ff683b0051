"""Mamba-2 mixer: in_proj -> [z | xBC | dt], causal conv1d + SiLU on xBC, SSD, gated RMSNorm, out_proj.

dt: softplus(dt + dt_bias) clamped to `config.time_step_limit` ((0, inf) by default, i.e. no
clamp, as vLLM does), the same rule in prefill, decode and verify so that every path agrees.
(transformers clamps dt >= time_step_min in its chunked prefill path only; see the tests.)

Tensor parallel: heads are sharded; B/C groups are sharded with them, or replicated when
tp_size > n_groups (each rank then keeps the single group its heads read). The gated norm
works per group of d_inner / n_groups channels; when a group is split over ranks its sum of
squares is all-reduced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemodeploy.engine.batch import BatchMetadata
from nemodeploy.engine.cache import HybridCache
from nemodeploy.engine.kernels import Kernels
from nemodeploy.engine.model.linear import Linear
from nemodeploy.engine.model.parallel import ParallelConfig, all_reduce, rows_loader, set_loader, shard_range
from nemodeploy.engine.quant.config import QuantConfig
from nemodeploy.models.config import NemotronHConfig


class MambaMixer(nn.Module):
    def __init__(self, config: NemotronHConfig, parallel: ParallelConfig, prefix: str, cache_key: str, ops: Kernels, dtype: torch.dtype,
                 quant: QuantConfig) -> None:
        super().__init__()
        if config.mamba_proj_bias:
            raise ValueError("mamba_proj_bias is not supported")
        P, N, G = config.mamba_head_dim, config.ssm_state_size, config.n_groups
        d_inner = config.mamba_d_inner
        h0, self.num_heads = shard_range(config.mamba_num_heads, parallel.tp_rank, parallel.tp_size)
        self.group_start, self.n_groups = shard_range(G, parallel.tp_rank, parallel.tp_size)
        self.num_groups_total = G
        self.head_dim, self.state_size, self.chunk_size = P, N, config.chunk_size
        self.inner = self.num_heads * P
        self.conv_dim = self.inner + 2 * self.n_groups * N
        self.norm_group_size = d_inner // G
        self.eps, self.dt_limit = config.layer_norm_epsilon, config.time_step_limit
        self.parallel, self.cache_key, self.ops = parallel, cache_key, ops

        x_rows = (h0 * P, self.inner)
        b_rows = (d_inner + self.group_start * N, self.n_groups * N)
        c_rows = (d_inner + G * N + self.group_start * N, self.n_groups * N)
        conv_rows = [x_rows, b_rows, c_rows]
        in_rows = [x_rows] + [(d_inner + s, c) for s, c in conv_rows] + [(2 * d_inner + 2 * G * N + h0, self.num_heads)]
        heads = [(h0, self.num_heads)]

        self.in_proj = Linear(config.hidden_size, self.inner + self.conv_dim + self.num_heads, f"{prefix}.in_proj", quant, ops, dtype, 0, in_rows)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, config.conv_kernel, groups=self.conv_dim, bias=config.use_conv_bias, dtype=dtype)
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads, dtype=torch.float32))
        self.A_log = nn.Parameter(torch.empty(self.num_heads, dtype=torch.float32))
        self.D = nn.Parameter(torch.empty(self.num_heads, dtype=torch.float32))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.empty(self.inner, dtype=dtype))
        self.out_proj = Linear(self.inner, config.hidden_size, f"{prefix}.out_proj", quant, ops, dtype, 1, [x_rows])

        set_loader(self.conv1d.weight, rows_loader(f"{prefix}.conv1d.weight", 0, conv_rows))
        if self.conv1d.bias is not None:
            set_loader(self.conv1d.bias, rows_loader(f"{prefix}.conv1d.bias", 0, conv_rows))
        for name in ("dt_bias", "A_log", "D"):
            set_loader(getattr(self, name), rows_loader(f"{prefix}.{name}", 0, heads))
        set_loader(self.norm.weight, rows_loader(f"{prefix}.norm.weight", 0, [x_rows]))
        self.requires_grad_(False)

    def _split_xbc(self, xbc: torch.Tensor):
        x, B, C = xbc.split([self.inner, self.n_groups * self.state_size, self.n_groups * self.state_size], dim=-1)
        lead = xbc.shape[:-1]
        return (
            x.reshape(*lead, self.num_heads, self.head_dim),
            B.reshape(*lead, self.n_groups, self.state_size),
            C.reshape(*lead, self.n_groups, self.state_size),
        )

    def forward(self, hidden: torch.Tensor, batch: BatchMetadata, cache: HybridCache) -> torch.Tensor:
        ops = self.ops
        z, xbc, dt = self.in_proj(hidden).split([self.inner, self.conv_dim, self.num_heads], dim=-1)
        conv_w, conv_b = self.conv1d.weight.squeeze(1), self.conv1d.bias
        conv_states, ssm_states = cache.conv[self.cache_key], cache.ssm[self.cache_key]
        A = -torch.exp(self.A_log.float())
        y = torch.empty(hidden.shape[0], self.num_heads, self.head_dim, dtype=torch.float32, device=hidden.device)
        nd, nt = batch.num_decodes, batch.num_decode_tokens
        if nd:
            slots = batch.mamba_slots[:nd]
            spec = batch.save_spec_states
            xbc_d = xbc[:nt].reshape(nd, batch.decode_query_len, self.conv_dim)
            xbc_d = ops.causal_conv1d_update(xbc_d, conv_w, conv_b, conv_states, slots, cache.spec_conv[self.cache_key][:nd] if spec else None)
            x, B, C = self._split_xbc(xbc_d)
            y_d = ops.selective_state_update(
                x, dt[:nt].reshape(nd, -1, self.num_heads), A, B, C, self.D, self.dt_bias, self.dt_limit,
                ssm_states, slots, cache.spec_ssm[self.cache_key][:nd] if spec else None,
            )
            y[:nt] = y_d.flatten(0, 1)
        if batch.num_prefills:
            slots, has_state = batch.mamba_slots[nd:], batch.has_initial_state[nd:]
            qsl = batch.prefill_query_start_loc
            xbc_p = ops.causal_conv1d_varlen(xbc[nt:], conv_w, conv_b, conv_states, qsl, slots, has_state)
            x, B, C = self._split_xbc(xbc_p)
            y[nt:] = ops.ssd_chunk_scan_varlen(
                x, dt[nt:], A, B, C, self.D, self.dt_bias, self.chunk_size, self.dt_limit, ssm_states, qsl, slots, has_state
            )
        normed = self._gated_norm(y.flatten(1), z)
        return all_reduce(self.out_proj(normed.to(hidden.dtype)), self.parallel.tp_size)

    def _gated_norm(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.norm_group_size <= self.inner:
            return self.ops.gated_rms_norm(y, z, self.norm.weight, self.norm_group_size, self.eps)
        # this rank holds part of one norm group: sum the squares over the ranks sharing it
        gated = y.float() * F.silu(z.float())
        sums = torch.zeros(gated.shape[0], self.num_groups_total, dtype=torch.float32, device=y.device)
        sums[:, self.group_start] = gated.pow(2).sum(-1)
        variance = all_reduce(sums, self.parallel.tp_size)[:, self.group_start, None] / self.norm_group_size
        return self.norm.weight * (gated * torch.rsqrt(variance + self.eps)).to(y.dtype)
