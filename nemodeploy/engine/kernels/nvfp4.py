"""NVFP4 weight format and its PyTorch reference (quantise, pack, dequantise).

Layout, per weight matrix of shape [..., N, K] (K is the reduction axis):

* ``packed``  uint8 [..., N, K // 2]: two E2M1 codes a byte, element ``2i`` in the low nibble.
  An E2M1 code is sign (bit 3), exponent (bits 2-1, bias 1) and mantissa (bit 0), which encodes
  0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives.
* ``scales``  uint8 [..., N, K // 16]: the bits of one FP8 E4M3 scale per 16 consecutive values.
* ``global_scale`` fp32 [...] (one per matrix, e.g. [E] for stacked experts): multiplies every value.

value = e2m1(code) * e4m3(scale) * global_scale. That is 4.5 bits a weight plus a negligible fp32.
"""

from dataclasses import dataclass

import torch

BLOCK = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E2M1_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
_E2M1_MIDPOINTS = (E2M1_VALUES[1:] + E2M1_VALUES[:-1]) / 2


@dataclass(frozen=True)
class NVFP4Weight:
    packed: torch.Tensor
    scales: torch.Tensor
    global_scale: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        """Logical shape [..., N, K] of the dequantised matrix."""
        return (*self.packed.shape[:-1], self.packed.shape[-1] * 2)

    def expert(self, e: int) -> "NVFP4Weight":
        """Matrix `e` of a stacked [E, N, K] weight."""
        return NVFP4Weight(self.packed[e], self.scales[e], self.global_scale[e])

    def stacked(self) -> "NVFP4Weight":
        """A single matrix [N, K] as a stack of one, [1, N, K] (what the grouped GEMM takes)."""
        return NVFP4Weight(self.packed[None], self.scales[None], self.global_scale.reshape(1))


def quantize(weight: torch.Tensor) -> NVFP4Weight:
    """Quantise [..., N, K] to NVFP4 with one global scale per matrix (the last two dims)."""
    *lead, n, k = weight.shape
    if k % BLOCK:
        raise ValueError(f"reduction dim {k} is not a multiple of {BLOCK}")
    w = weight.float()
    amax = w.abs().amax(dim=(-2, -1)).clamp(min=1e-12)
    global_scale = amax / (E2M1_MAX * E4M3_MAX)
    blocks = w.reshape(*lead, n, k // BLOCK, BLOCK)
    block_scale = blocks.abs().amax(-1) / E2M1_MAX / global_scale[..., None, None]
    scale_fp8 = block_scale.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    denom = scale_fp8.float() * global_scale[..., None, None]
    scaled = blocks / torch.where(denom == 0, torch.ones_like(denom), denom)[..., None]
    magnitude = torch.bucketize(scaled.abs().clamp(max=E2M1_MAX), _E2M1_MIDPOINTS)
    codes = (magnitude | ((scaled < 0).to(torch.int64) << 3)).to(torch.uint8).reshape(*lead, n, k)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return NVFP4Weight(packed.contiguous(), scale_fp8.view(torch.uint8).contiguous(), global_scale.float())


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., K // 2] -> E2M1 codes uint8 [..., K]."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)


def dequantize(weight: NVFP4Weight, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    codes = unpack_codes(weight.packed).long()
    values = E2M1_VALUES.to(codes.device)[codes & 7] * (1 - 2 * (codes >> 3)).float()
    scales = weight.scales.view(torch.float8_e4m3fn).float() * weight.global_scale.float()[..., None, None]
    values = values.unflatten(-1, (-1, BLOCK)) * scales[..., None]
    return values.flatten(-2).to(dtype)
