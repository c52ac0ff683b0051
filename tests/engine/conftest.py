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
