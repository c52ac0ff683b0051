"""`nemodeploy serve` on a checkpoint that cannot be served: one line on stderr naming the file (or the
module and its quantization), exit 2, never a traceback. Each case is a copy of the tiny model quantized
by NVIDIA ModelOpt (MIXED_PRECISION: routed experts NVFP4, shared experts FP8), damaged one way."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from nemodeploy.cli import main


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> Path:
    pytest.importorskip("modelopt", reason="nvidia-modelopt is not installed (the `quant` extra)")
    from nemodeploy.engine.tiny import write_tiny_modelopt_checkpoint

    return write_tiny_modelopt_checkpoint(tmp_path_factory.mktemp("mixed"), "MIXED_PRECISION")


def edit_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(directory: Path) -> None:
        config = json.loads((directory / "config.json").read_text())
        change(config)
        (directory / "config.json").write_text(json.dumps(config))
    return damage


def unsupported_algorithm(config: dict) -> None:
    config["quantization_config"]["quantized_layers"]["backbone.layers.1.mixer.experts"]["quant_algo"] = "W4A8_AWQ"


def another_method(config: dict) -> None:
    config["quantization_config"]["quant_method"] = "awq"


def unquantized_config(directory: Path) -> None:
    """The config says nothing is quantized; the shard holds NVFP4 bytes."""
    edit_config(lambda config: config.pop("quantization_config"))(directory)
    (directory / "hf_quant_config.json").unlink()


def truncated_shard(directory: Path) -> None:
    shard = directory / "model.safetensors"
    os.truncate(shard, shard.stat().st_size // 2)


def random_shard(directory: Path) -> None:
    (directory / "model.safetensors").write_bytes(os.urandom(4096))


def drop_a_scale(directory: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(directory / "model.safetensors")
    del tensors["backbone.layers.6.mixer.experts.3.up_proj.weight_scale"]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def write(name: str, text: str) -> Callable[[Path], None]:
    return lambda directory: (directory / name).write_text(text)


CASES = {
    # damage -> what the line must name
    "an algorithm the engine does not run": (edit_config(unsupported_algorithm),
                                             ["config.json", "backbone.layers.1.mixer.experts", "W4A8_AWQ"]),
    "a quantization method other than modelopt": (edit_config(another_method), ["config.json", "awq"]),
    "quantized tensors the config calls unquantized": (unquantized_config, ["model.safetensors", "uint8"]),
    "a truncated shard": (truncated_shard, ["model.safetensors"]),
    "a shard of random bytes": (random_shard, ["model.safetensors"]),
    "a missing weight scale": (drop_a_scale, ["backbone.layers.6.mixer.experts.3.up_proj.weight_scale"]),
    "a config of another shape": (edit_config(lambda c: c.update(hidden_size=2 * c["hidden_size"])),
                                  ["model.safetensors", "shape"]),
    "a config of another architecture": (write("config.json", '{"model_type": "llama", "hidden_size": 64}'),
                                         ["config.json", "llama"]),
    "a config field of the wrong type": (edit_config(lambda c: c.update(hidden_size="64")), ["hidden_size"]),
    "a config.json that is not JSON": (write("config.json", "{quantization_config"), ["config.json"]),
    "a tokenizer.json that is not JSON": (write("tokenizer.json", '{"version": '), ["tokenizer.json"]),
    "no config.json": (lambda directory: (directory / "config.json").unlink(), ["config.json"]),
    "no directory at all": (shutil.rmtree, ["no such directory"]),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES)
def test_a_bad_checkpoint_is_one_line_naming_the_file(quantized, tmp_path, case):
    damage, named = CASES[case]
    directory = tmp_path / "checkpoint"
    shutil.copytree(quantized, directory)
    damage(directory)
    result = CliRunner().invoke(main, ["serve", "--model", str(directory), "--port", "0"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("nemodeploy: ") and str(directory) in line
    for part in named:
        assert part in line, f"{part!r} not in {line!r}"


def test_the_undamaged_copy_is_a_checkpoint_the_engine_loads(quantized):
    """The cases above fail for their damage alone: the same checkpoint, intact, loads and generates."""
    from nemodeploy.engine.config import EngineConfig
    from nemodeploy.engine.core import LLMEngine

    engine = LLMEngine(EngineConfig(model=str(quantized), num_kv_blocks=16, num_mamba_slots=1))
    assert engine.stats().kv_blocks_total == 16


@pytest.mark.timeout(120)
def test_a_device_that_is_not_there_is_one_line_and_a_runtime_failure(quantized):
    result = CliRunner().invoke(main, ["serve", "--model", str(quantized), "--device", "cuda:99", "--port", "0"])
    assert result.exit_code == 1, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"nemodeploy: {quantized}: the engine did not start (")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["a truncated shard", "an algorithm the engine does not run"])
def test_up_of_a_topology_on_a_bad_checkpoint_is_the_same_one_line(quantized, tmp_path, monkeypatch, case):
    """`up` serves in the foreground what `serve` would: the checkpoint at fault is one line too."""
    from nemodeploy.topology.loader import load

    damage, named = CASES[case]
    directory = tmp_path / "checkpoint"
    shutil.copytree(quantized, directory)
    damage(directory)
    data = load("local").model_dump(mode="json")
    data.update(name="bad", model={"path": str(directory), "precision": "nvfp4"})
    (tmp_path / "bad.yaml").write_text(json.dumps(data))
    monkeypatch.setenv("NEMODEPLOY_CACHE", str(tmp_path / "cache"))
    from nemodeploy.net import free_port

    result = CliRunner().invoke(main, ["up", str(tmp_path / "bad.yaml"), "--port", str(free_port())])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("nemodeploy: ") and all(part in line for part in named), line
