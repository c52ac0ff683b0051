"""GQA attention as Nemotron-H has it: no positional embedding, no bias, scale head_dim ** -0.5.

Query heads are sharded over tensor-parallel ranks; KV heads too, or replicated (each rank
keeps the one its query heads read) when there are fewer KV heads than ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemodeploy.engine.batch import BatchMetadata
from nemodeploy.engine.cache import HybridCache
from nemodeploy.engine.kernels import Kernels
from nemodeploy.engine.model.parallel import ParallelConfig, all_reduce, rows_loader, set_loader, shard_range
from nemodeploy.models.config import NemotronHConfig


class Attention(nn.Module):
    def __init__(self, config: NemotronHConfig, parallel: ParallelConfig, prefix: str, cache_key: str, ops: Kernels, dtype: torch.dtype) -> None:
        super().__init__()
        if config.attention_bias:
            raise ValueError("attention_bias is not supported (Nemotron-H has none)")
        hd = config.head_dim
        q_start, self.num_heads = shard_range(config.num_attention_heads, parallel.tp_rank, parallel.tp_size)
        kv_start, self.num_kv_heads = shard_range(config.num_key_value_heads, parallel.tp_rank, parallel.tp_size)
        self.head_dim, self.scale = hd, hd**-0.5
        self.parallel, self.cache_key, self.ops = parallel, cache_key, ops
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * hd, bias=False, dtype=dtype)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * hd, bias=False, dtype=dtype)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * hd, bias=False, dtype=dtype)
        self.o_proj = nn.Linear(self.num_heads * hd, config.hidden_size, bias=False, dtype=dtype)
        q_rows, kv_rows = [(q_start * hd, self.num_heads * hd)], [(kv_start * hd, self.num_kv_heads * hd)]
        set_loader(self.q_proj.weight, rows_loader(f"{prefix}.q_proj.weight", 0, q_rows))
        set_loader(self.k_proj.weight, rows_loader(f"{prefix}.k_proj.weight", 0, kv_rows))
        set_loader(self.v_proj.weight, rows_loader(f"{prefix}.v_proj.weight", 0, kv_rows))
        set_loader(self.o_proj.weight, rows_loader(f"{prefix}.o_proj.weight", 1, q_rows))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, batch: BatchMetadata, cache: HybridCache) -> torch.Tensor:
        q = F.linear(x, self.q_proj.weight).view(-1, self.num_heads, self.head_dim)
        k = F.linear(x, self.k_proj.weight).view(-1, self.num_kv_heads, self.head_dim)
        v = F.linear(x, self.v_proj.weight).view(-1, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = cache.kv[self.cache_key]
        self.ops.write_kv(k, v, k_cache, v_cache, batch.slot_mapping)
        out = self.ops.paged_attention(q, k_cache, v_cache, batch.block_tables, batch.query_start_loc, batch.seq_lens, self.scale)
        return all_reduce(F.linear(out.flatten(1), self.o_proj.weight), self.parallel.tp_size)
