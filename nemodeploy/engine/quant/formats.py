"""The tensors a linear weight [out, in] is stored as, per format, and their dequantization.

ModelOpt's layouts (what vLLM's modelopt.py loads):
- unquantized: ``weight`` [out, in] in the model dtype (a float checkpoint is cast on load);
- FP8: ``weight`` float8_e4m3fn [out, in], ``weight_scale`` fp32 [] (per tensor);
  value = weight * weight_scale;
- NVFP4: ``weight`` uint8 [out, in / 2] (two E2M1 codes a byte, element 2i in the low nibble),
  ``weight_scale`` float8_e4m3fn [out, in / 16] (one per 16 inputs), ``weight_scale_2`` fp32 []
  (per tensor); value = e2m1 * (weight_scale * weight_scale_2), see kernels/nvfp4.py.

``input_scale`` (the static activation scale of W8A8 / W4A4) is not read: the engine keeps
activations in the model dtype (FP8 runs W8A16, NVFP4 W4A16), so it holds no tensor it does not use.
Routed experts stack the same tensors over a leading expert dim (per-tensor scales become [E]).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nemodeploy.engine.kernels.nvfp4 import NVFP4Weight, dequantize as dequantize_nvfp4
from nemodeploy.engine.quant.config import FP8, NVFP4, NVFP4_GROUP


@dataclass(frozen=True)
class Field:
    """One checkpoint tensor of a stored weight."""

    suffix: str  # checkpoint name = module name + "." + suffix
    dtype: torch.dtype | None  # what the checkpoint must hold; None: any float, cast to the model dtype
    in_divisor: int | None  # the input dim is stored as in // in_divisor; None: a per-tensor scalar


LAYOUTS: dict[str | None, tuple[Field, ...]] = {
    None: (Field("weight", None, 1),),
    FP8: (Field("weight", torch.float8_e4m3fn, 1), Field("weight_scale", torch.float32, None)),
    NVFP4: (
        Field("weight", torch.uint8, 2),
        Field("weight_scale", torch.float8_e4m3fn, NVFP4_GROUP),
        Field("weight_scale_2", torch.float32, None),
    ),
}
QUANTIZED_DTYPES = (torch.uint8, torch.float8_e4m3fn, torch.float8_e5m2)


def nvfp4_weight(module: torch.nn.Module) -> NVFP4Weight:
    """The NVFP4 tensors of `module` (a Linear or stacked experts) as the kernels take them."""
    return NVFP4Weight(module.weight, module.weight_scale.view(torch.uint8), module.weight_scale_2)


def dequantize(module: torch.nn.Module, fmt: str | None, dtype: torch.dtype) -> torch.Tensor:
    """The dense weight [..., out, in] in `dtype` (the reference path; kernels read the packed tensors)."""
    if fmt is None:
        return module.weight
    if fmt == FP8:
        return (module.weight.float() * module.weight_scale.float()[..., None, None]).to(dtype)
    return dequantize_nvfp4(nvfp4_weight(module), dtype)
