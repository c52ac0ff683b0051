"""Load an HF-format Nemotron-H directory (config.json + model.safetensors, or sharded
model-*.safetensors with model.safetensors.index.json) into the engine's model, one rank's shard.

Streaming: parameters are loaded grouped by the shard file that holds them, one file open at a
time, and each reads only the slice this rank keeps (safetensors slices of the memory-mapped
file). A file is unmapped before the next is opened, so host memory peaks at about the pages of
one shard this rank touches plus the rank's own weights (see benchmarks/load_memory.py).

Quantized ModelOpt checkpoints (quant/config.py) load as stored: the config says which module
holds which format, and a tensor whose dtype disagrees with it is refused with its file named.
Before any weight is read, the index, the shards' headers and the config are checked against
each other.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open

from nemodeploy.engine.kernels import get_kernels
from nemodeploy.engine.model.nemotron_h import NemotronHForCausalLM
from nemodeploy.engine.model.parallel import ParallelConfig, PipelineStage
from nemodeploy.engine.quant.config import read_quant_config
from nemodeploy.engine.quant.formats import QUANTIZED_DTYPES
from nemodeploy.models.config import NemotronHConfig

INDEX = "model.safetensors.index.json"

Progress = Callable[[int, int, Path], None]
"""progress(shards done, shards in all, the shard just loaded)."""


class CheckpointError(ValueError):
    """A checkpoint directory that does not hold what the model needs, or disagrees with itself."""


def _open(path: Path):
    try:
        return safe_open(path, "pt")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


class CheckpointReader:
    """Maps tensor names to their safetensors file; `read(name)` returns a lazy slice.

    At most one file is open: reading from another closes the previous one (unmaps it).
    """

    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory)
        index = directory / INDEX
        self.directory = directory
        self.files = self._from_index(index) if index.exists() else self._from_shards(sorted(directory.glob("*.safetensors")))
        if not self.files:
            raise CheckpointError(f"{directory}: no safetensors weights found")
        self._open: tuple[Path, object] | None = None

    def _from_index(self, index: Path) -> dict[str, Path]:
        try:
            body = json.loads(index.read_text())
            weight_map = body["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
        by_file: dict[str, set[str]] = defaultdict(set)
        for name, file in weight_map.items():
            by_file[file].add(name)
        total = 0
        for file, names in sorted(by_file.items()):
            path = self.directory / file
            if not path.exists():
                raise CheckpointError(f"{index}: names shard {file}, which is missing")
            with _open(path) as f:
                held = set(f.keys())
                total += sum(_nbytes(f.get_slice(n)) for n in held)
            if not names <= held:
                missing = sorted(names - held)
                raise CheckpointError(f"{path}: lacks {len(missing)} tensor(s) the index {index.name} puts there, e.g. {missing[0]!r}")
        declared = (body.get("metadata") or {}).get("total_size")
        if declared is not None and int(declared) != total:
            raise CheckpointError(f"{index}: total_size {declared} bytes, its shards hold {total}")
        return {name: self.directory / file for name, file in weight_map.items()}

    def _from_shards(self, paths: list[Path]) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for path in paths:
            with _open(path) as f:
                for name in f.keys():
                    if name in files:
                        raise CheckpointError(f"{path}: tensor {name!r} is also in {files[name].name} (and there is no {INDEX})")
                    files[name] = path
        return files

    def read(self, name: str):
        if name not in self.files:
            raise CheckpointError(f"{self.directory}: checkpoint lacks tensor {name!r}")
        path = self.files[name]
        if self._open is None or self._open[0] != path:
            self.close()
            self._open = (path, _open(path))
        return self._open[1].get_slice(name)

    def close(self) -> None:
        if self._open is not None:
            self._open[1].__exit__(None, None, None)
            self._open = None


def _nbytes(tensor_slice) -> int:
    shape, dtype = tensor_slice.get_shape(), tensor_slice.get_dtype()
    bits = {"F64": 64, "I64": 64, "U64": 64, "F32": 32, "I32": 32, "U32": 32, "F16": 16, "BF16": 16, "I16": 16, "U16": 16}.get(dtype, 8)
    count = 1
    for d in shape:
        count *= d
    return count * bits // 8


class _FirstRead(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _first_file(param: torch.nn.Parameter, name: str, reader: CheckpointReader) -> Path | None:
    """The file of the first tensor `param` reads (its loader is stopped at that first read); None for
    an optional parameter (`param.optional`, e.g. a KV-cache scale) the checkpoint does not hold."""

    def stop(tensor_name: str):
        raise _FirstRead(tensor_name)

    try:
        param.weight_loader(stop) if hasattr(param, "weight_loader") else stop(name)
    except _FirstRead as first:
        name = first.name
    if name not in reader.files:
        if getattr(param, "optional", False):
            return None
        raise CheckpointError(f"{reader.directory}: checkpoint lacks tensor {name!r}")
    return reader.files[name]


def load_weights(model: torch.nn.Module, reader: CheckpointReader, progress: Progress | None = None) -> None:
    """Fill every parameter of `model` from `reader`, shard file by shard file."""
    by_file: dict[Path, list[tuple[str, torch.nn.Parameter]]] = defaultdict(list)
    for name, param in model.named_parameters():
        path = _first_file(param, name, reader)
        if path is not None:  # else the parameter keeps the value it was built with
            by_file[path].append((name, param))
    files = sorted(by_file)
    for i, path in enumerate(files, 1):
        for name, param in by_file[path]:
            _load_param(name, param, reader, path)
        reader.close()
        if progress:
            progress(i, len(files), path)


def _load_param(name: str, param: torch.nn.Parameter, reader: CheckpointReader, where: Path) -> None:
    loader = getattr(param, "weight_loader", None)
    tensor = loader(reader.read) if loader else reader.read(name)[...]
    expected = getattr(param, "checkpoint_dtype", None)
    if expected is not None and tensor.dtype != expected:
        raise CheckpointError(f"{where}: {name} is {tensor.dtype}, its quantization format stores {expected}")
    if expected is None and tensor.dtype in QUANTIZED_DTYPES:
        raise CheckpointError(
            f"{where}: {name} is stored quantized ({tensor.dtype}) but the checkpoint's quantization config "
            "leaves it unquantized"
        )
    if tuple(tensor.shape) != tuple(param.shape):
        raise CheckpointError(f"{where}: tensor for {name} has shape {tuple(tensor.shape)}, the model expects {tuple(param.shape)}")
    param.data.copy_(tensor)


def print_progress(done: int, total: int, path: Path) -> None:
    """One stderr line per shard: a server's log shows how far a long load has come."""
    print(f"loaded weights: shard {done}/{total} ({path.name})", file=sys.stderr, flush=True)


def load_model(
    model_dir: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    parallel: ParallelConfig = ParallelConfig(),
    with_mtp: bool = True,
    progress: Progress | None = print_progress,
    stage: PipelineStage | None = None,
) -> NemotronHForCausalLM:
    """The model of `model_dir` on `device` in `dtype` (fp32 params stay fp32), this rank's shard.

    with_mtp=False skips the MTP head (and its `mtp.*` tensors); a pipeline `stage` reads only its layers'. Quantized tensors stay in their
    stored dtype (quant/formats.py).
    """
    config = NemotronHConfig.from_file(model_dir)
    quant = read_quant_config(model_dir)
    reader = CheckpointReader(model_dir)
    with torch.device(device):
        model = NemotronHForCausalLM(config, parallel, dtype, get_kernels(device), with_mtp, quant, stage)
    load_weights(model, reader, progress)
    return model.eval()
