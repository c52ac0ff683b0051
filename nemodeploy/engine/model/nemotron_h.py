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
from nemodeploy.engine.model.parallel import ParallelConfig, PipelineStage
from nemodeploy.engine.quant.config import QuantConfig
from nemodeploy.models.config import NemotronHConfig


class Backbone(nn.Module):
    """The stage's layers, keyed by their global index (so `layers.N` is the checkpoint's name)."""

    def __init__(self, config: NemotronHConfig, parallel: ParallelConfig, ops: Kernels, dtype: torch.dtype,
                 quant: QuantConfig, stage: PipelineStage, with_embeddings: bool) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype) if with_embeddings else None
        self.layers = nn.ModuleDict({
            str(i): DecoderLayer(config.layer_types[i], config, parallel, layer_key(i), ops, dtype, quant)
            for i in stage.layers
        })
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon, ops, dtype) if stage.last else None


class NemotronHForCausalLM(nn.Module):
    """The engine's model. One instance per rank; `parallel` says which shard it holds, `stage`
    which layers (default: all).

    forward(input_ids [T], batch, cache) -> hidden [T, hidden] after norm_f (what
    compute_logits and the MTP head take). Sequences' Mamba and KV state live in `cache`.
    A pipeline stage after the first takes the previous stage's hidden states instead of
    embedding input_ids; a stage before the last returns its residual stream, without norm_f.
    """

    def __init__(
        self,
        config: NemotronHConfig,
        parallel: ParallelConfig = ParallelConfig(),
        dtype: torch.dtype = torch.bfloat16,
        ops: Kernels | None = None,
        with_mtp: bool = True,
        quant: QuantConfig = QuantConfig(),
        stage: PipelineStage | None = None,
    ) -> None:
        super().__init__()
        if config.model_type != "nemotron_h":
            raise ValueError(f"model_type {config.model_type!r} is not nemotron_h")
        self.stage = stage or PipelineStage.whole(config.num_layers)
        self.config, self.parallel = config, parallel
        self.ops = ops or get_kernels("cpu")
        with_mtp = with_mtp and bool(config.num_nextn_predict_layers) and self.stage.last
        # the MTP head embeds its input tokens too: the last stage holds the embedding when it has one
        self.backbone = Backbone(config, parallel, self.ops, dtype, quant, self.stage, self.stage.first or with_mtp)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, "lm_head", quant, self.ops, dtype) \
            if self.stage.last else None
        self.mtp = MTP(config, parallel, self.ops, dtype, quant) if with_mtp else None
        self.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, batch: BatchMetadata, cache: HybridCache,
                hidden: torch.Tensor | None = None) -> torch.Tensor:
        x = self.backbone.embeddings(input_ids) if self.stage.first else hidden
        for layer in self.backbone.layers.values():
            x = layer(x, batch, cache)
        return self.backbone.norm_f(x) if self.stage.last else x

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
