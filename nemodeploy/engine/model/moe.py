"""(Latent) MoE: sigmoid top-k router on the full hidden state (fp32), routed relu2 experts
(in the latent when `moe_latent_size` is set: fc1_latent_proj -> experts -> weighted sum ->
fc2_latent_proj), plus a shared expert on the original hidden state.

Parallelism: with ep_size > 1 each rank holds n_routed_experts / ep_size whole experts; with
tp_size > 1 (and ep_size 1) every rank holds every expert's slice of the intermediate. Either
way a rank's routed output is a partial sum over ranks, combined with one all-reduce (after
fc2_latent_proj, which is linear, so the latent sum need not be reduced first). The shared
expert joins that all-reduce when it is tensor-sharded and is added after it otherwise.

Quantized experts (quant/): NVFP4 experts run the `routed_experts_nvfp4` kernel on their packed
tensors (W4A16); FP8 experts are dequantized to the activation dtype for `routed_experts`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemodeploy.engine.kernels import Kernels
from nemodeploy.engine.model.linear import ExpertWeights, Linear
from nemodeploy.engine.model.mlp import MLP
from nemodeploy.engine.model.parallel import ParallelConfig, all_reduce, shard_range
from nemodeploy.engine.quant.config import NVFP4, QuantConfig
from nemodeploy.engine.quant.formats import nvfp4_weight
from nemodeploy.models.config import NemotronHConfig


class MoE(nn.Module):
    def __init__(self, config: NemotronHConfig, parallel: ParallelConfig, prefix: str, ops: Kernels, dtype: torch.dtype,
                 quant: QuantConfig) -> None:
        super().__init__()
        if config.mlp_bias:
            raise ValueError("mlp_bias is not supported in MoE layers")
        hidden, latent, E = config.hidden_size, config.moe_latent_size, config.n_routed_experts
        self.config, self.parallel, self.ops = config, parallel, ops
        self.gate = nn.Module()
        self.gate.weight = nn.Parameter(torch.empty(E, hidden, dtype=dtype), requires_grad=False)
        self.gate.e_score_correction_bias = nn.Parameter(torch.empty(E, dtype=torch.float32), requires_grad=False)
        if latent is not None:
            self.fc1_latent_proj = Linear(hidden, latent, f"{prefix}.fc1_latent_proj", quant, ops, dtype)
            self.fc2_latent_proj = Linear(latent, hidden, f"{prefix}.fc2_latent_proj", quant, ops, dtype)
        self.expert_start, n_local = shard_range(E, parallel.ep_rank, parallel.ep_size)
        i_start, i_count = shard_range(config.moe_intermediate_size, parallel.tp_rank, parallel.tp_size) if parallel.ep_size == 1 else (0, config.moe_intermediate_size)
        width = config.expert_input_size
        experts = range(self.expert_start, self.expert_start + n_local)
        rows = [(i_start, i_count)]
        self.w_up = ExpertWeights(prefix, "up_proj", experts, i_count, width, quant, dtype, 0, rows)
        self.w_down = ExpertWeights(prefix, "down_proj", experts, width, i_count, quant, dtype, 1, rows)
        self.shared_experts = (
            MLP(hidden, config.moe_shared_expert_intermediate_size, parallel, f"{prefix}.shared_experts", ops, dtype, quant)
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
        latent = self.fc1_latent_proj(x) if cfg.moe_latent_size is not None else x
        routed = self._experts(latent, weights, ids)
        out = self.fc2_latent_proj(routed) if cfg.moe_latent_size is not None else routed
        if self.shared_experts is None:
            return all_reduce(out, self.parallel.world_size)
        shared = self.shared_experts(x, reduce=False)
        if self.shared_experts.is_partial:
            return all_reduce(out + shared, self.parallel.world_size)
        return all_reduce(out, self.parallel.world_size) + shared

    def _experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if self.w_up.format == NVFP4:
            return self.ops.routed_experts_nvfp4(x, nvfp4_weight(self.w_up), nvfp4_weight(self.w_down), weights, ids, self.expert_start)
        up, down = self.w_up.dense(x.dtype), self.w_down.dense(x.dtype)
        return self.ops.routed_experts(x, up, down, weights, ids, self.expert_start)
