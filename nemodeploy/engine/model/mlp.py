"""Dense relu2 MLP (up -> relu^2 -> down), intermediate sharded over tensor-parallel ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemodeploy.engine.model.parallel import ParallelConfig, all_reduce, rows_loader, set_loader, shard_range


def relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x).square()


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, parallel: ParallelConfig, prefix: str, dtype: torch.dtype) -> None:
        super().__init__()
        start, count = shard_range(intermediate_size, parallel.tp_rank, parallel.tp_size)
        self.parallel = parallel
        self.up_proj = nn.Linear(hidden_size, count, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(count, hidden_size, bias=False, dtype=dtype)
        set_loader(self.up_proj.weight, rows_loader(f"{prefix}.up_proj.weight", 0, [(start, count)]))
        set_loader(self.down_proj.weight, rows_loader(f"{prefix}.down_proj.weight", 1, [(start, count)]))
        self.requires_grad_(False)

    @property
    def is_partial(self) -> bool:
        """Whether forward(reduce=False) returns this rank's share of a sum over ranks."""
        return self.parallel.tp_size > 1

    def forward(self, x: torch.Tensor, reduce: bool = True) -> torch.Tensor:
        out = F.linear(relu2(F.linear(x, self.up_proj.weight)), self.down_proj.weight)
        return all_reduce(out, self.parallel.tp_size) if reduce else out
