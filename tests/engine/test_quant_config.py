"""Which module a ModelOpt config quantizes, and how: config.json and the legacy hf_quant_config.json."""

from __future__ import annotations

import json

import pytest

from nemodeploy.engine.quant.config import QuantConfig, QuantizationError, read_quant_config

EXPERTS, SHARED = "backbone.layers.1.mixer.experts", "backbone.layers.1.mixer.shared_experts.up_proj"


def _write(tmp_path, config_json: dict | None = None, legacy: dict | None = None):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "nemotron_h"} | ({"quantization_config": config_json} if config_json else {})))
    if legacy is not None:
        (tmp_path / "hf_quant_config.json").write_text(json.dumps(legacy))
    return read_quant_config(tmp_path)


def test_no_quantization_config_is_an_unquantized_checkpoint(tmp_path):
    assert _write(tmp_path).format_of(EXPERTS) is None


def test_single_algorithm_quantizes_every_linear_but_the_ignored(tmp_path):
    quant = _write(tmp_path, {"quant_method": "modelopt", "quant_algo": "nvfp4", "ignore": ["lm_head", "*mixer.gate*", "mtp*"]})
    assert quant.format_of(EXPERTS) == quant.format_of("backbone.layers.0.mixer.in_proj") == "NVFP4"
    assert quant.format_of("lm_head") is quant.format_of("mtp.layers.0.eh_proj") is None


def test_mixed_precision_keys_name_modules_or_their_parents(tmp_path):
    legacy = {"producer": {"name": "modelopt"}, "quantization": {
        "quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": "FP8", "exclude_modules": ["lm_head"],
        "quantized_layers": {EXPERTS: {"quant_algo": "W4A16_NVFP4", "group_size": 16}, SHARED: {"quant_algo": "FP8"},
                             "backbone.layers.6.mixer.experts.0.up_proj": {"quant_algo": "NVFP4"}}}}
    quant = _write(tmp_path, legacy=legacy)
    assert quant.format_of(f"{EXPERTS}.3.down_proj") == quant.format_of(EXPERTS) == "NVFP4"  # a parent key
    assert quant.format_of("backbone.layers.6.mixer.experts") == "NVFP4"  # keys of its experts
    assert quant.format_of(SHARED) == "FP8"
    assert quant.format_of("backbone.layers.1.mixer.shared_experts.down_proj") is None  # not listed: unquantized
    assert quant.kv_cache_algo == "FP8" and quant.source.endswith("hf_quant_config.json")


def test_config_json_wins_over_the_legacy_file(tmp_path):
    quant = _write(tmp_path, {"quant_method": "modelopt", "quant_algo": "FP8",
                              "kv_cache_scheme": {"type": "float", "num_bits": 8, "dynamic": False}},
                   legacy={"quantization": {"quant_algo": "NVFP4"}})
    assert quant.format_of(EXPERTS) == "FP8" and quant.kv_cache_algo == "FP8"


@pytest.mark.parametrize("config, message", [
    ({"quant_method": "modelopt", "quant_algo": "FP8_PB_WO"}, f"{EXPERTS}: quantization FP8_PB_WO is not supported"),
    ({"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 32}, f"{EXPERTS}: NVFP4 with group_size 32"),
    ({"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION",
      "quantized_layers": {f"{EXPERTS}.0.up_proj": {"quant_algo": "NVFP4"}, f"{EXPERTS}.1.up_proj": {"quant_algo": "FP8"}}},
     rf"{EXPERTS}: its parts use different algorithms \['FP8', 'NVFP4'\]"),
])
def test_what_the_engine_cannot_run_names_the_module_and_algorithm(tmp_path, config, message):
    with pytest.raises(QuantizationError, match=message):
        _write(tmp_path, config).format_of(EXPERTS)


@pytest.mark.parametrize("config, message", [
    ({"quant_method": "awq", "bits": 4}, "quantization method 'awq' is not supported"),
    ({"quant_method": "modelopt"}, "has no quant_algo"),
    ({"quant_method": "modelopt", "quant_algo": "MIXED_PRECISION"}, "MIXED_PRECISION needs a non-empty quantized_layers"),
])
def test_a_config_the_engine_cannot_read_names_the_file(tmp_path, config, message):
    with pytest.raises(QuantizationError, match=rf"config\.json: .*{message}"):
        _write(tmp_path, config)


def test_the_default_is_unquantized():
    assert QuantConfig().format_of("lm_head") is None
