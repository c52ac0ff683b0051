"""Which linear of a checkpoint is stored quantized, and how: NVIDIA ModelOpt's config as vLLM reads it.

Where the config lives (first found wins):
- ``config.json`` ``quantization_config`` with ``quant_method: modelopt``: ``quant_algo``,
  ``ignore`` (wildcards of unquantized modules), for MIXED_PRECISION ``quantized_layers``
  (module -> {quant_algo, group_size}), ``kv_cache_scheme``;
- the legacy ``hf_quant_config.json``: ``{"producer": ..., "quantization": {quant_algo,
  exclude_modules, quantized_layers, kv_cache_quant_algo, group_size}}``.

A module is unquantized when it matches an exclude entry (equal, fnmatch wildcard, or, as vLLM
still does for checkpoints of ModelOpt < 0.39, a substring). Otherwise a single-algorithm
checkpoint quantizes every linear with ``quant_algo``, and a MIXED_PRECISION one quantizes the
modules ``quantized_layers`` names (a key may name a module or a parent of it, e.g. ``...experts``
for all routed experts of a layer); modules it does not name stay unquantized.

An algorithm the engine cannot run raises QuantizationError naming the module and the algorithm
when that module is built, never later as a shape mismatch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

NVFP4, FP8 = "NVFP4", "FP8"
NVFP4_GROUP = 16
# checkpoint algorithm -> the storage format the engine runs it as (activations stay unquantized:
# NVFP4 runs W4A16, FP8 runs W8A16, so NVFP4's W4A4 and W4A16 checkpoints hold the same tensors)
FORMATS = {"NVFP4": NVFP4, "W4A16_NVFP4": NVFP4, "FP8": FP8}
KV_CACHE_ALGOS = ("FP8",)


class QuantizationError(ValueError):
    """A quantized checkpoint the engine cannot run, or whose config contradicts itself."""


@dataclass(frozen=True)
class QuantConfig:
    """How the checkpoint stores each linear. The default (no algo) is an unquantized checkpoint."""

    algo: str | None = None  # upper-cased quant_algo: NVFP4, FP8, MIXED_PRECISION, ... or None
    exclude: tuple[str, ...] = ()
    layers: dict[str, str] = field(default_factory=dict)  # MIXED_PRECISION: module -> algo
    group_size: int = NVFP4_GROUP
    kv_cache_algo: str | None = None
    source: str = ""  # the file it came from, for messages

    def algo_of(self, module: str) -> str | None:
        """The algorithm `module` (a linear, or a layer's routed experts) is stored with; None: unquantized."""
        if self.algo is None or self.is_excluded(module):
            return None
        if self.algo != "MIXED_PRECISION":
            return self.algo
        if module in self.layers:
            return self.layers[module]
        parents = [key for key in self.layers if module.startswith(key + ".")]
        if parents:
            return self.layers[max(parents, key=len)]
        children = {algo for key, algo in self.layers.items() if key.startswith(module + ".")}
        if len(children) > 1:
            raise QuantizationError(f"{self.source}: {module}: its parts use different algorithms {sorted(children)}")
        return children.pop() if children else None

    def format_of(self, module: str) -> str | None:
        """NVFP4, FP8 or None (unquantized) for `module`; QuantizationError for an algorithm not run here."""
        algo = self.algo_of(module)
        if algo is None:
            return None
        if algo not in FORMATS:
            raise QuantizationError(
                f"{self.source}: {module}: quantization {algo} is not supported by the embedded engine "
                f"(it runs {', '.join(FORMATS)})"
            )
        if FORMATS[algo] == NVFP4 and self.group_size != NVFP4_GROUP:
            raise QuantizationError(f"{self.source}: {module}: NVFP4 with group_size {self.group_size} (the format has {NVFP4_GROUP})")
        return FORMATS[algo]

    def is_excluded(self, module: str) -> bool:
        return any(module == p or fnmatch(module, p) or (p and p in module) for p in self.exclude)


def read_quant_config(directory: str | Path) -> QuantConfig:
    """The checkpoint's quantization, from config.json or the legacy hf_quant_config.json."""
    directory = Path(directory)
    config_file, legacy_file = directory / "config.json", directory / "hf_quant_config.json"
    section = json.loads(config_file.read_text()).get("quantization_config") if config_file.exists() else None
    if section is not None:
        return _parse(section, str(config_file), legacy=False)
    if legacy_file.exists():
        return _parse(json.loads(legacy_file.read_text()), str(legacy_file), legacy=True)
    return QuantConfig()


def _parse(section: dict, source: str, legacy: bool) -> QuantConfig:
    method = str(section.get("quant_method", "modelopt" if legacy else "")).lower()
    if not method.startswith("modelopt"):
        raise QuantizationError(
            f"{source}: quantization method {method or '(none)'!r} is not supported by the embedded engine "
            "(it reads NVIDIA ModelOpt checkpoints: quant_method modelopt)"
        )
    body = section.get("quantization", section) if legacy or "quantization" in section else section
    if not isinstance(body, dict) or not body.get("quant_algo"):
        raise QuantizationError(f"{source}: the quantization config has no quant_algo")
    exclude = body.get("exclude_modules" if "exclude_modules" in body else "ignore") or []
    if not isinstance(exclude, list):
        raise QuantizationError(f"{source}: exclude_modules / ignore must be a list, not {type(exclude).__name__}")
    layers = {name: str(info.get("quant_algo", "")).upper() for name, info in (body.get("quantized_layers") or {}).items()}
    algo = str(body["quant_algo"]).upper()
    if algo == "MIXED_PRECISION" and not layers:
        raise QuantizationError(f"{source}: quant_algo MIXED_PRECISION needs a non-empty quantized_layers")
    group_size = body.get("group_size") or next(
        (info.get("group_size") for info in (body.get("quantized_layers") or {}).values() if info.get("group_size")), NVFP4_GROUP
    )
    return QuantConfig(algo, tuple(exclude), layers, int(group_size), _kv_cache_algo(body), source)


def _kv_cache_algo(body: dict) -> str | None:
    scheme = body.get("kv_cache_scheme")
    if isinstance(scheme, dict):
        return "FP8" if (scheme.get("type"), scheme.get("num_bits")) == ("float", 8) else None
    algo = body.get("kv_cache_quant_algo")
    return str(algo).upper() if algo else None
