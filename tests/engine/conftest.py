"""Fixtures for the engine model tests: seeded transformers references."""

from __future__ import annotations

import pytest
import torch
from model_harness import spec_for

from nemodeploy.engine.tiny import _hf_config, randomize_


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """variant -> (checkpoint dir written by transformers' save_pretrained, the transformers model)."""
    from transformers import NemotronHForCausalLM

    made = {}

    def get(variant: str):
        if variant not in made:
            torch.manual_seed(0)
            model = NemotronHForCausalLM(_hf_config(spec_for(variant))).eval()
            randomize_(model, seed=1)
            directory = tmp_path_factory.mktemp(variant)
            model.save_pretrained(directory)
            made[variant] = (directory, model)
        return made[variant]

    return get


@pytest.fixture(scope="session")
def modelopt_checkpoint(tmp_path_factory):
    """algo -> (checkpoint quantized and exported by nvidia-modelopt, its modelopt-dequantized copy).

    MIXED_PRECISION also carries ModelOpt's FP8 KV-cache scales (k_proj.k_scale / v_proj.v_scale).
    """
    pytest.importorskip("modelopt", reason="nvidia-modelopt is not installed (the `quant` extra)")
    from modelopt_harness import dequantized_copy

    from nemodeploy.engine.tiny import write_tiny_modelopt_checkpoint

    made = {}

    def get(algo: str):
        if algo not in made:
            quantized = write_tiny_modelopt_checkpoint(tmp_path_factory.mktemp(algo.lower()), algo,
                                                       kv_cache_fp8=algo == "MIXED_PRECISION")
            made[algo] = quantized, dequantized_copy(quantized, tmp_path_factory.mktemp(f"{algo.lower()}-dequantized"))
        return made[algo]

    return get
