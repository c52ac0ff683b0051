"""Models are found by local path first, then by built-in name or Hugging Face id."""

import json

import pytest

from nemodeploy.models.config import ConfigError
from nemodeploy.models.specs import SPECS, resolve_model


@pytest.mark.parametrize(
    "model_id",
    [
        "nemotron-3-ultra",
        "NEMOTRON-3-Ultra",
        "nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B",
        "nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-BF16",
        "nvidia/nvidia-nemotron-3-ultra-550b-a55b-nvfp4",
        "nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-FP8",
    ],
)
def test_ultra_is_found_by_name_or_any_checkpoint_id(model_id):
    resolved = resolve_model(model_id, None)
    assert resolved.name == "nemotron-3-ultra"
    assert resolved.config.num_layers == 108


def test_the_ultra_spec_is_the_published_108_layer_pattern():
    raw = json.loads(SPECS["nemotron-3-ultra"].file.read_text())
    pattern = raw["hybrid_override_pattern"]
    # attention where the released config.json has it; Mamba and MoE alternate around it
    assert [i for i, kind in enumerate(pattern) if kind == "*"] == [7, 14, 23, 32, 39, 48, 57, 64, 73, 82, 89, 98]
    assert pattern.replace("*", "") == "ME" * 48
    config = resolve_model("nemotron-3-ultra", None).config
    assert config.max_position_embeddings == 262_144, "the native context; 1M is an opt-in extension"
    assert (config.count("mamba"), config.count("moe"), config.count("attention")) == (48, 48, 12)
    assert config.mtp_layer_types == ("attention", "moe")
    assert config.vocab_size == 131072


def test_every_spec_file_in_the_folder_is_a_spec_with_a_parsable_config():
    for name, spec in SPECS.items():
        assert spec.file.stem == name
        assert resolve_model(name, None).config.hidden_size > 0


def test_a_local_path_wins_over_the_id(tmp_path):
    raw = json.loads(SPECS["nemotron-3-nano"].file.read_text())
    (tmp_path / "config.json").write_text(json.dumps(raw))
    resolved = resolve_model("nemotron-3-ultra", str(tmp_path))
    assert resolved.config.hidden_size == 2688
    assert resolved.source == str(tmp_path)


def test_a_path_without_config_json_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_model("nemotron-3-ultra", str(tmp_path))


def test_an_unknown_id_lists_the_known_names_and_asks_for_a_local_path():
    with pytest.raises(ConfigError) as err:
        resolve_model("meta-llama/Llama-3.1-8B", None)
    message = str(err.value)
    assert all(name in message for name in SPECS)
    assert "local path" in message and "config.json" in message
