"""GQA attention as Nemotron-H has it: no positional embedding, no bias, scale head_dim ** -0.5.

Query heads are sharded over tensor-parallel ranks; KV heads too, or replicated (each rank
keeps the one its query heads read) when there are fewer KV heads than ranks.

FP8 KV cache (the cache's KV tensors are float8_e4m3fn): K and V are stored divided by per-tensor
scales, k_scale / v_scale, read from the checkpoint when it was calibrated for an FP8 KV cache
(ModelOpt `kv_cache_quant_algo: FP8`: `k_proj.k_scale`, `v_proj.v_scale`), else (also for a layer
the checkpoint has none for, such as an unquantized MTP layer) 1.0, as vLLM does.
A per-tensor scale folds out of the attention: scores use softmax scale * k_scale and the output
is multiplied by v_scale, so the attention op itself reads the stored values unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from nemodeploy.engine.batch import BatchMetadata
from nemodeploy.engine.cache import HybridCache
from nemodeploy.engine.kernels import Kernels
from nemodeploy.engine.model.linear import Linear
from nemodeploy.engine.model.parallel import ParallelConfig, all_reduce, set_loader, shard_range
from nemodeploy.engine.quant.config import FP8, QuantConfig
from nemodeploy.models.config import NemotronHConfig


class Attention(nn.Module):
    def __init__(self, config: NemotronHConfig, parallel: ParallelConfig, prefix: str, cache_key: str, ops: Kernels, dtype: torch.dtype,
                 quant: QuantConfig) -> None:
        super().__init__()
        if config.attention_bias:
            raise ValueError("attention_bias is not supported (Nemotron-H has none)")
        hd = config.head_dim
        q_start, self.num_heads = shard_range(config.num_attention_heads, parallel.tp_rank, parallel.tp_size)
        kv_start, self.num_kv_heads = shard_range(config.num_key_value_heads, parallel.tp_rank, parallel.tp_size)
        self.head_dim, self.scale = hd, hd**-0.5
        self.parallel, self.cache_key, self.ops = parallel, cache_key, ops
        q_rows, kv_rows = [(q_start * hd, self.num_heads * hd)], [(kv_start * hd, self.num_kv_heads * hd)]
        hidden = config.hidden_size
        self.q_proj = Linear(hidden, self.num_heads * hd, f"{prefix}.q_proj", quant, ops, dtype, 0, q_rows)
        self.k_proj = Linear(hidden, self.num_kv_heads * hd, f"{prefix}.k_proj", quant, ops, dtype, 0, kv_rows)
        self.v_proj = Linear(hidden, self.num_kv_heads * hd, f"{prefix}.v_proj", quant, ops, dtype, 0, kv_rows)
        self.o_proj = Linear(self.num_heads * hd, hidden, f"{prefix}.o_proj", quant, ops, dtype, 1, q_rows)
        for name, proj in (("k_scale", "k_proj"), ("v_scale", "v_proj")):
            scale = torch.ones((), dtype=torch.float32)
            if quant.kv_cache_algo == FP8:
                param = nn.Parameter(scale)
                param.optional = True
                set_loader(param, _scalar_loader(f"{prefix}.{proj}.{name}"))
                setattr(self, name, param)
            else:
                self.register_buffer(name, scale, persistent=False)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, batch: BatchMetadata, cache: HybridCache) -> torch.Tensor:
        q = self.q_proj(x).view(-1, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(-1, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(-1, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = cache.kv[self.cache_key]
        scale = self.scale
        if k_cache.dtype == torch.float8_e4m3fn:
            k, v, scale = _to_fp8_range(k, self.k_scale), _to_fp8_range(v, self.v_scale), self.scale * self.k_scale
        self.ops.write_kv(k, v, k_cache, v_cache, batch.slot_mapping)
        out = self.ops.paged_attention(q, k_cache, v_cache, batch.block_tables, batch.query_start_loc, batch.seq_lens, scale)
        if k_cache.dtype == torch.float8_e4m3fn:
            out = out * self.v_scale.to(out.dtype)
        return all_reduce(self.o_proj(out.flatten(1)), self.parallel.tp_size)


E4M3_MAX = 448.0


def _to_fp8_range(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale, saturated to E4M3's range (write_kv casts it to the cache's float8_e4m3fn)."""
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX)


def _scalar_loader(name: str):
    return lambda read: read(name)[...]
