"""Linear weights as the checkpoint stores them (unquantized, FP8 or NVFP4), sharded for this rank.

`Linear` is one [out, in] weight; `ExpertWeights` stacks one such weight per local routed expert. Sizes are this rank's.
Each registers the tensors of its format (quant/formats.py) under the checkpoint's names, with a
loader that reads only this rank's slice: `segments` ((start, count) pairs, in logical units)
along `dim` 0 (output rows) or 1 (inputs; packed NVFP4 bytes and block scales are cut at the
matching places, so an NVFP4 input split must fall on a 16-value block).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemodeploy.engine.kernels import Kernels
from nemodeploy.engine.model.parallel import set_loader
from nemodeploy.engine.quant.config import NVFP4, QuantConfig, QuantizationError
from nemodeploy.engine.quant.formats import LAYOUTS, Field, dequantize, nvfp4_weight

Segments = list[tuple[int, int]]


def _slices(module: str, field: Field, dim: int | None, segments: Segments | None) -> list[tuple]:
    """Index tuples that cut this rank's part of one stored tensor (whole when unsharded)."""
    if field.in_divisor is None or segments is None:
        return [(...,)]
    divisor = field.in_divisor if dim == 1 else 1
    if any(s % divisor or c % divisor for s, c in segments):
        raise QuantizationError(f"{module}: its inputs cannot be split at {segments}: {field.suffix} holds {divisor} values a column")
    lead = (slice(None),) * dim
    return [lead + (slice(s // divisor, (s + c) // divisor),) for s, c in segments]


def _read(read, name: str, index: list[tuple], dim: int) -> torch.Tensor:
    tensor = read(name)
    parts = [tensor[i] for i in index]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


class _StoredWeight(nn.Module):
    """The tensors of `names` (one name: a matrix [out, in]; several: stacked [E, out, in])."""

    def __init__(self, names: list[str], stacked: bool, out_features: int, in_features: int, dtype: torch.dtype,
                 fmt: str | None, dim: int | None = None, segments: Segments | None = None) -> None:
        super().__init__()
        self.format = fmt
        lead = (len(names),) if stacked else ()
        for field in LAYOUTS[fmt]:
            if field.in_divisor and in_features % field.in_divisor:
                raise QuantizationError(f"{names[0]}: {in_features} inputs on this rank do not fill whole {field.suffix} columns "
                                        f"of {field.in_divisor} values")
            shape = lead + ((out_features, in_features // field.in_divisor) if field.in_divisor else ())
            param = nn.Parameter(torch.empty(shape, dtype=field.dtype or dtype), requires_grad=False)
            param.checkpoint_dtype = field.dtype
            index = _slices(names[0], field, dim, segments)
            set_loader(param, self._loader(names, stacked, field.suffix, index, dim or 0))
            setattr(self, field.suffix, param)

    @staticmethod
    def _loader(names: list[str], stacked: bool, suffix: str, index: list[tuple], dim: int):
        def load(read) -> torch.Tensor:
            parts = [_read(read, f"{name}.{suffix}", index, dim) for name in names]
            return torch.stack(parts) if stacked else parts[0]

        return load

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self, self.format, dtype)


class Linear(_StoredWeight):
    """y = x W^T; NVFP4 through the `linear_nvfp4` kernel, FP8 dequantized to the activation dtype."""

    def __init__(self, in_features: int, out_features: int, prefix: str, quant: QuantConfig, ops: Kernels,
                 dtype: torch.dtype, dim: int | None = None, segments: Segments | None = None) -> None:
        super().__init__([prefix], False, out_features, in_features, dtype, quant.format_of(prefix), dim, segments)
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.format == NVFP4:
            return self.ops.linear_nvfp4(x, nvfp4_weight(self))
        return F.linear(x, self.dense(x.dtype))


class ExpertWeights(_StoredWeight):
    """One projection (`up_proj` or `down_proj`) of the local experts, stacked: [E, out, in] logical."""

    def __init__(self, prefix: str, proj: str, experts: range, out_features: int, in_features: int, quant: QuantConfig,
                 dtype: torch.dtype, dim: int, segments: Segments) -> None:
        names = [f"{prefix}.experts.{e}.{proj}" for e in experts]
        fmt = quant.format_of(f"{prefix}.experts")
        super().__init__(names, True, out_features, in_features, dtype, fmt, dim, segments)
