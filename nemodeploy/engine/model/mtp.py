"""Multi-token prediction head, structured as vLLM's nemotron_h_mtp.

    h = eh_proj(cat[enorm(embedding(next_token)), hnorm(hidden)])
    h = layer(h) for each layer of mtp_layer_types (x + mixer(norm(x)))
    out = final_layernorm(h)

Checkpoint names (vLLM reads these): mtp.layers.0.{enorm,hnorm}.weight,
mtp.layers.0.eh_proj.weight [hidden, 2*hidden]; mtp.layers.N.{norm.weight, mixer.*} per
layer; mtp.layers.{last}.final_layernorm.weight. Embedding and lm_head are the main model's.
"""

from __future__ import annotations

import torch
from torch import nn

from nemodeploy.engine.batch import BatchMetadata
from nemodeploy.engine.cache import HybridCache, mtp_layer_key
from nemodeploy.engine.kernels import Kernels
from nemodeploy.engine.model.layer import DecoderLayer
from nemodeploy.engine.model.linear import Linear
from nemodeploy.engine.model.norm import RMSNorm
from nemodeploy.engine.model.parallel import ParallelConfig
from nemodeploy.engine.quant.config import QuantConfig
from nemodeploy.models.config import MAMBA, NemotronHConfig


class MTPLayer(DecoderLayer):
    """A decoder layer that may carry the step's fusion inputs (first) or its final norm (last)."""

    def __init__(self, kind, config, parallel, prefix, ops, dtype, quant, first: bool, last: bool) -> None:
        super().__init__(kind, config, parallel, prefix, ops, dtype, quant)
        hidden, eps = config.hidden_size, config.layer_norm_epsilon
        if first:
            self.enorm = RMSNorm(hidden, eps, ops, dtype)
            self.hnorm = RMSNorm(hidden, eps, ops, dtype)
            self.eh_proj = Linear(2 * hidden, hidden, f"{prefix}.eh_proj", quant, ops, dtype)
        if last:
            self.final_layernorm = RMSNorm(hidden, eps, ops, dtype)


class MTP(nn.Module):
    def __init__(self, config: NemotronHConfig, parallel: ParallelConfig, ops: Kernels, dtype: torch.dtype,
                 quant: QuantConfig) -> None:
        super().__init__()
        if config.num_nextn_predict_layers != 1:
            raise ValueError("only one MTP step (num_nextn_predict_layers = 1) is supported, as in vLLM")
        kinds = config.mtp_layer_types
        if MAMBA in kinds:
            raise ValueError("Mamba layers in the MTP head are not supported")
        self.layers = nn.ModuleList(
            MTPLayer(kind, config, parallel, mtp_layer_key(i), ops, dtype, quant, first=i == 0, last=i == len(kinds) - 1)
            for i, kind in enumerate(kinds)
        )
        self.requires_grad_(False)

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, batch: BatchMetadata, cache: HybridCache) -> torch.Tensor:
        first, last = self.layers[0], self.layers[-1]
        x = first.eh_proj(torch.cat([first.enorm(embeds), first.hnorm(hidden)], dim=-1))
        for layer in self.layers:
            x = layer(x, batch, cache)
        return last.final_layernorm(x)
