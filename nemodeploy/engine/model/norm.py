from __future__ import annotations

import torch
from torch import nn

from nemodeploy.engine.kernels import Kernels


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, ops: Kernels, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden_size, dtype=dtype), requires_grad=False)
        self.eps = eps
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)
