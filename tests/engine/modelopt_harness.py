"""Checkpoints quantized by NVIDIA ModelOpt (nemodeploy.engine.tiny) and their reference: the same
checkpoint with every quantized weight dequantized by ModelOpt's own QTensor classes (not by the
engine's code), which transformers then runs in fp32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

SCALES = ("weight_scale", "weight_scale_2", "input_scale", "k_scale", "v_scale")


def dequantized_copy(quantized: Path, target: Path) -> Path:
    from modelopt.torch.quantization.qtensor import FP8QTensor, NVFP4QTensor
    from safetensors.torch import load_file, save_file

    tensors = load_file(quantized / "model.safetensors")
    dense = {}
    for name, t in tensors.items():
        module, _, leaf = name.rpartition(".")
        if leaf in SCALES:
            continue
        if leaf == "weight" and f"{module}.weight_scale_2" in tensors:  # NVFP4
            shape = torch.Size((t.shape[0], t.shape[1] * 2))
            t = NVFP4QTensor(shape, torch.float32, t).dequantize(
                torch.float32, scale=tensors[f"{module}.weight_scale"], double_scale=tensors[f"{module}.weight_scale_2"],
                block_sizes={-1: 16},
            )
        elif leaf == "weight" and t.dtype == torch.float8_e4m3fn:  # FP8, per-tensor scale
            t = FP8QTensor(t.shape, torch.float32, t).dequantize(torch.float32, scale=tensors[f"{module}.weight_scale"])
        dense[name] = t.float() if t.is_floating_point() else t
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in dense.items()}, target / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((quantized / "config.json").read_text())
    config.pop("quantization_config")
    (target / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(quantized / name, target / name)
    return target
