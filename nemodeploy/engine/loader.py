"""Load an HF-format Nemotron-H directory (config.json + model.safetensors, or sharded
model-*.safetensors with model.safetensors.index.json) into the engine's model, one rank's shard.

Tensors are read lazily (safetensors slices), so a rank reads only the rows it keeps.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from nemodeploy.engine.kernels import get_kernels
from nemodeploy.engine.model.nemotron_h import NemotronHForCausalLM
from nemodeploy.engine.model.parallel import ParallelConfig
from nemodeploy.models.config import NemotronHConfig


class CheckpointError(ValueError):
    """A checkpoint directory that does not hold what the model needs."""


class CheckpointReader:
    """Maps tensor names to their safetensors file; `read(name)` returns a lazy slice."""

    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory)
        index = directory / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {name: directory / file for name, file in weight_map.items()}
        else:
            files = {}
            for path in sorted(directory.glob("*.safetensors")):
                with safe_open(path, "pt") as f:
                    files.update({name: path for name in f.keys()})
        if not files:
            raise CheckpointError(f"{directory}: no safetensors weights found")
        self.directory, self.files = directory, files
        self._handles: dict[Path, object] = {}

    def read(self, name: str):
        if name not in self.files:
            raise CheckpointError(f"{self.directory}: checkpoint lacks tensor {name!r}")
        path = self.files[name]
        if path not in self._handles:
            self._handles[path] = safe_open(path, "pt")
        return self._handles[path].get_slice(name)


def load_weights(model: torch.nn.Module, reader: CheckpointReader) -> None:
    for name, param in model.named_parameters():
        loader = getattr(param, "weight_loader", None)
        tensor = loader(reader.read) if loader else reader.read(name)[:]
        if tuple(tensor.shape) != tuple(param.shape):
            raise CheckpointError(f"tensor for {name} has shape {tuple(tensor.shape)}, the model expects {tuple(param.shape)}")
        param.data.copy_(tensor)


def load_model(
    model_dir: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    parallel: ParallelConfig = ParallelConfig(),
    with_mtp: bool = True,
) -> NemotronHForCausalLM:
    """The model of `model_dir` on `device` in `dtype` (fp32 params stay fp32), this rank's shard.

    with_mtp=False skips the MTP head (and its `mtp.*` tensors).
    """
    config = NemotronHConfig.from_file(model_dir)
    with torch.device(device):
        model = NemotronHForCausalLM(config, parallel, dtype, get_kernels(device), with_mtp)
    load_weights(model, CheckpointReader(model_dir))
    return model.eval()
