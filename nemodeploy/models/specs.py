"""Built-in model specs: config.json files shipped in `specs/`, found by a name or a Hugging Face id.

A spec is any `specs/<name>.json`; the table below adds the Hugging Face ids that
name the same architecture and where its values come from. A file with no entry
in the table is still a spec, known by its file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nemodeploy.models.config import ConfigError, NemotronHConfig

SPECS_DIR = Path(__file__).with_name("specs")

_ULTRA = "nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B"
_SUPER = "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B"
_NANO = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B"

_KNOWN: dict[str, tuple[tuple[str, ...], str]] = {
    "nemotron-3-ultra": (
        (_ULTRA, f"{_ULTRA}-BF16", f"{_ULTRA}-FP8", f"{_ULTRA}-NVFP4"),
        "config.json of the BF16 checkpoint written from the published values in "
        "shared/reference/nemotron3-ultra.md (108 layers, Mamba and MoE alternating, attention at layers 7, 14, "
        "23, 32, 39, 48, 57, 64, 73, 82, 89, 98; max_position_embeddings 262144, the native context: the 1M-token "
        "context is an extension engines accept only when told)",
    ),
    "nemotron-3-super": (
        (f"{_SUPER}-BF16", f"{_SUPER}-NVFP4"),
        f"values of https://huggingface.co/{_SUPER}-BF16/blob/main/config.json (as reproduced in public code; "
        "fields not needed for planning omitted); its safetensors hold 123,611,033,088 parameters with MTP",
    ),
    "nemotron-3-nano": (
        (f"{_NANO}-BF16", f"{_NANO}-FP8", f"{_NANO}-NVFP4"),
        f"https://huggingface.co/{_NANO}-BF16/blob/main/config.json (transformers 4.55.4 export)",
    ),
    "nemotron-h-tiny": ((), "a tiny random-weight Nemotron-H for local tests and the embedded engine on CPU"),
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    file: Path
    hf_ids: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    source: str  # where the config came from: a local path, or the built-in spec and its provenance
    config: NemotronHConfig


def _scan() -> dict[str, ModelSpec]:
    specs = {}
    for file in sorted(SPECS_DIR.glob("*.json")):
        hf_ids, source = _KNOWN.get(file.stem, ((), f"built-in spec {file.name}"))
        specs[file.stem] = ModelSpec(file.stem, file, hf_ids, source)
    return specs


SPECS: dict[str, ModelSpec] = _scan()


def find_spec(model_id: str) -> ModelSpec | None:
    """The spec named `model_id`, or listing it as a Hugging Face id; case-insensitive."""
    key = model_id.strip().lower()
    for spec in SPECS.values():
        if key == spec.name or key in (hf_id.lower() for hf_id in spec.hf_ids):
            return spec
    return None


def resolve_model(model_id: str | None, path: str | None) -> ResolvedModel:
    """The model's architecture: from a local directory when `path` is given, else a built-in spec."""
    if path:
        directory = Path(path).expanduser()
        if not (directory / "config.json").is_file():
            raise ConfigError(f"model path {path}: no config.json there (give a local HF-format directory)")
        return ResolvedModel(directory.resolve().name, str(directory), NemotronHConfig.from_file(directory))
    if model_id:
        spec = find_spec(model_id)
        if spec is not None:
            return ResolvedModel(spec.name, f"built-in spec {spec.name}: {spec.source}", NemotronHConfig.from_file(spec.file))
    known = ", ".join(f"{s.name} ({', '.join(s.hf_ids)})" if s.hf_ids else s.name for s in SPECS.values())
    raise ConfigError(
        f"no built-in spec for model {model_id!r}; known: {known}. "
        "For any other model give a local path to a directory with its config.json"
    )
