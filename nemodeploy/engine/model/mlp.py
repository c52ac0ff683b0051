"""Dense relu2 MLP (up -> relu^2 -> down), intermediate sharded over tensor-parallel ranks."""

from __future__ import annotations

import torch
from torch import nn

from nemodeploy.engine.kernels import Kernels
from nemodeploy.engine.model.linear import Linear
from nemodeploy.engine.model.parallel import ParallelConfig, all_reduce, shard_range
from nemodeploy.engine.quant.config import QuantConfig


def relu2(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x).square()


class MLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, parallel: ParallelConfig, prefix: str, ops: Kernels,
                 dtype: torch.dtype, quant: QuantConfig) -> None:
        super().__init__()
        start, count = shard_range(intermediate_size, parallel.tp_rank, parallel.tp_size)
        self.parallel = parallel
        self.up_proj = Linear(hidden_size, count, f"{prefix}.up_proj", quant, ops, dtype, 0, [(start, count)])
        self.down_proj = Linear(count, hidden_size, f"{prefix}.down_proj", quant, ops, dtype, 1, [(start, count)])
        self.requires_grad_(False)

    @property
    def is_partial(self) -> bool:
        """Whether forward(reduce=False) returns this rank's share of a sum over ranks."""
        return self.parallel.tp_size > 1

    def forward(self, x: torch.Tensor, reduce: bool = True) -> torch.Tensor:
        out = self.down_proj(relu2(self.up_proj(x)))
        return all_reduce(out, self.parallel.tp_size) if reduce else out
