"""NemotronH for causal LM over a flattened continuous batch with a hybrid (paged KV + Mamba slot) cache.

Module paths equal the checkpoint's tensor names (`backbone.*`, `lm_head`, `mtp.*`) so that
the loader reads every unsharded tensor under its own name.
"""

from __future__ import annotations

import torch
from torch import nn

from nemodeploy.engine.batch import BatchMetadata
from nemodeploy.engine.cache import HybridCache, layer_key
from nemodeploy.engine.kernels import Kernels, get_kernels
from nemodeploy.engine.model.layer import DecoderLayer
from nemodeploy.engine.model.linear import Linear
from nemodeploy.engine.model.mtp import MTP
from nemodeploy.engine.model.norm import RMSNorm
from nemodeploy.engine.model.parallel import ParallelConfig
from nemodeploy.engine.quant.config import QuantConfig
from nemodeploy.models.config import NemotronHConfig


class Backbone(nn.Module):
    def __init__(self, config: NemotronHConfig, parallel: ParallelConfig, ops: Kernels, dtype: torch.dtype,
                 quant: QuantConfig) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(
            DecoderLayer(kind, config, parallel, layer_key(i), ops, dtype, quant) for i, kind in enumerate(config.layer_types)
        )
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon, ops, dtype)


class NemotronHForCausalLM(nn.Module):
    """The engine's model. One instance per rank; `parallel` says which shard it holds.

    forward(input_ids [T], batch, cache) -> hidden [T, hidden] after norm_f (what
    compute_logits and the MTP head take). Sequences' Mamba and KV state live in `cache`.
    """

    def __init__(
        self,
        config: NemotronHConfig,
        parallel: ParallelConfig = ParallelConfig(),
        dtype: torch.dtype = torch.bfloat16,
        ops: Kernels | None = None,
        with_mtp: bool = True,
        quant: QuantConfig = QuantConfig(),
    ) -> None:
        super().__init__()
        if config.model_type != "nemotron_h":
            raise ValueError(f"model_type {config.model_type!r} is not nemotron_h")
        self.config, self.parallel = config, parallel
        self.ops = ops or get_kernels("cpu")
        self.backbone = Backbone(config, parallel, self.ops, dtype, quant)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, "lm_head", quant, self.ops, dtype)
        self.mtp = MTP(config, parallel, self.ops, dtype, quant) if with_mtp and config.num_nextn_predict_layers else None
        self.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, batch: BatchMetadata, cache: HybridCache) -> torch.Tensor:
        x = self.backbone.embeddings(input_ids)
        for layer in self.backbone.layers:
            x = layer(x, batch, cache)
        return self.backbone.norm_f(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def mtp_forward(self, input_ids: torch.Tensor, previous_hidden: torch.Tensor, batch: BatchMetadata, cache: HybridCache) -> torch.Tensor:
        """One MTP step: hidden [T, hidden] for draft logits (compute_logits) at the next-next token.

        input_ids[t] is the token after position t, previous_hidden[t] the main model's
        (or the previous MTP step's) hidden state at t. The MTP attention uses cache keys
        `mtp.layers.N` (allocate the cache with include_mtp=True) and the batch's positions.
        """
        if self.mtp is None:
            raise ValueError("this model was built without its MTP layers")
        return self.mtp(self.backbone.embeddings(input_ids), previous_hidden, batch, cache)
