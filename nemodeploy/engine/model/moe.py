"""(Latent) MoE: sigmoid top-k router on the full hidden state (fp32), routed relu2 experts
(in the latent when `moe_latent_size` is set: fc1_latent_proj -> experts -> weighted sum ->
fc2_latent_proj), plus a shared expert on the original hidden state.

Parallelism: with ep_size > 1 each rank holds n_routed_experts / ep_size whole experts; with
tp_size > 1 (and ep_size 1) every rank holds every expert's slice of the intermediate. Either
way a rank's routed output is a partial sum over ranks, combined with one all-reduce (after
fc2_latent_proj, which is linear, so the latent sum need not be reduced first). The shared
expert joins that all-reduce when it is tensor-sharded and is added after it otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemodeploy.engine.kernels import Kernels
from nemodeploy.engine.model.mlp import MLP
from nemodeploy.engine.model.parallel import ParallelConfig, all_reduce, set_loader, shard_range
from nemodeploy.models.config import NemotronHConfig


def _experts_loader(prefix: str, proj: str, experts: range, dim: int, start: int, count: int):
    def load(read):
        lead = (slice(None),) * dim
        return torch.stack([read(f"{prefix}.experts.{e}.{proj}.weight")[lead + (slice(start, start + count),)] for e in experts])

    return load


class MoE(nn.Module):
    def __init__(self, config: NemotronHConfig, parallel: ParallelConfig, prefix: str, ops: Kernels, dtype: torch.dtype) -> None:
        super().__init__()
        if config.mlp_bias:
            raise ValueError("mlp_bias is not supported in MoE layers")
        hidden, latent, E = config.hidden_size, config.moe_latent_size, config.n_routed_experts
        self.config, self.parallel, self.ops = config, parallel, ops
        self.gate = nn.Module()
        self.gate.weight = nn.Parameter(torch.empty(E, hidden, dtype=dtype), requires_grad=False)
        self.gate.e_score_correction_bias = nn.Parameter(torch.empty(E, dtype=torch.float32), requires_grad=False)
        if latent is not None:
            self.fc1_latent_proj = nn.Linear(hidden, latent, bias=False, dtype=dtype)
            self.fc2_latent_proj = nn.Linear(latent, hidden, bias=False, dtype=dtype)
        self.expert_start, n_local = shard_range(E, parallel.ep_rank, parallel.ep_size)
        i_start, i_count = shard_range(config.moe_intermediate_size, parallel.tp_rank, parallel.tp_size) if parallel.ep_size == 1 else (0, config.moe_intermediate_size)
        width = config.expert_input_size
        experts = range(self.expert_start, self.expert_start + n_local)
        self.w_up = nn.Parameter(torch.empty(n_local, i_count, width, dtype=dtype), requires_grad=False)
        self.w_down = nn.Parameter(torch.empty(n_local, width, i_count, dtype=dtype), requires_grad=False)
        set_loader(self.w_up, _experts_loader(prefix, "up_proj", experts, 0, i_start, i_count))
        set_loader(self.w_down, _experts_loader(prefix, "down_proj", experts, 1, i_start, i_count))
        self.shared_experts = (
            MLP(hidden, config.moe_shared_expert_intermediate_size, parallel, f"{prefix}.shared_experts", dtype)
            if config.n_shared_experts and config.moe_shared_expert_intermediate_size
            else None
        )
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, batch=None, cache=None) -> torch.Tensor:
        cfg = self.config
        logits = F.linear(x.float(), self.gate.weight.float())
        weights, ids = self.ops.moe_route(
            logits, self.gate.e_score_correction_bias, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group,
            cfg.norm_topk_prob, cfg.routed_scaling_factor,
        )
        latent = F.linear(x, self.fc1_latent_proj.weight) if cfg.moe_latent_size is not None else x
        routed = self.ops.routed_experts(latent, self.w_up, self.w_down, weights, ids, self.expert_start)
        out = F.linear(routed, self.fc2_latent_proj.weight) if cfg.moe_latent_size is not None else routed
        if self.shared_experts is None:
            return all_reduce(out, self.parallel.world_size)
        shared = self.shared_experts(x, reduce=False)
        if self.shared_experts.is_partial:
            return all_reduce(out + shared, self.parallel.world_size)
        return all_reduce(out, self.parallel.world_size) + shared
