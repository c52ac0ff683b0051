"""One Nemotron-H block: x + mixer(RMSNorm(x)), the mixer chosen by the layer kind."""

from __future__ import annotations

import torch
from torch import nn

from nemodeploy.engine.batch import BatchMetadata
from nemodeploy.engine.cache import HybridCache
from nemodeploy.engine.kernels import Kernels
from nemodeploy.engine.model.attention import Attention
from nemodeploy.engine.model.mamba import MambaMixer
from nemodeploy.engine.model.mlp import MLP
from nemodeploy.engine.model.moe import MoE
from nemodeploy.engine.model.norm import RMSNorm
from nemodeploy.engine.model.parallel import ParallelConfig
from nemodeploy.engine.quant.config import QuantConfig
from nemodeploy.models.config import ATTENTION, MAMBA, MLP as MLP_KIND, MOE, NemotronHConfig


class DecoderLayer(nn.Module):
    """x + mixer(RMSNorm(x)); the mixer is Mamba-2, attention, MoE or a dense MLP."""

    def __init__(self, kind: str, config: NemotronHConfig, parallel: ParallelConfig, prefix: str, ops: Kernels, dtype: torch.dtype,
                 quant: QuantConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon, ops, dtype)
        mixer_prefix = f"{prefix}.mixer"
        if kind == MAMBA:
            self.mixer = MambaMixer(config, parallel, mixer_prefix, prefix, ops, dtype, quant)
        elif kind == ATTENTION:
            self.mixer = Attention(config, parallel, mixer_prefix, prefix, ops, dtype, quant)
        elif kind == MOE:
            self.mixer = MoE(config, parallel, mixer_prefix, ops, dtype, quant)
        elif kind == MLP_KIND:
            self.mixer = MLP(config.hidden_size, config.intermediate_size, parallel, mixer_prefix, ops, dtype, quant)
        else:
            raise ValueError(f"unknown layer kind {kind!r}")
        self.kind = kind

    def forward(self, x: torch.Tensor, batch: BatchMetadata, cache: HybridCache) -> torch.Tensor:
        h = self.norm(x)
        if self.kind in (MAMBA, ATTENTION):
            return x + self.mixer(h, batch, cache)
        return x + self.mixer(h)
