"""Loading shard by shard: each shard once, in order, with progress; a checkpoint whose index, shards
or config disagree is refused before the model runs, with the file named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from nemodeploy.engine.loader import CheckpointError, load_model

SHARDS = 3


def _shard(reference, directory, shards: int = SHARDS, index: bool = True):
    """The reference checkpoint split into `shards` files (names round-robin), with or without an index."""
    source, _ = reference("latent_g2_kv2")
    tensors = load_file(source / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in names[i::shards]}, directory / file, metadata={"format": "pt"})
        weight_map |= {n: file for n in names[i::shards]}
    if index:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (directory / "config.json").write_text((source / "config.json").read_text())
    return directory, weight_map


def _edit_index(directory, edit) -> None:
    path = directory / "model.safetensors.index.json"
    body = json.loads(path.read_text())
    edit(body)
    path.write_text(json.dumps(body))


def test_each_shard_is_loaded_once_in_order_with_progress(reference, tmp_path):
    directory, _ = _shard(reference, tmp_path)
    seen = []
    model = load_model(directory, torch.float32, with_mtp=False, progress=lambda done, total, path: seen.append((done, total, path.name)))
    assert seen == [(i + 1, SHARDS, f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors") for i in range(SHARDS)]
    single = load_model(reference("latent_g2_kv2")[0], torch.float32, with_mtp=False).state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in single.items())


def test_shards_without_an_index_load_too(reference, tmp_path):
    directory, _ = _shard(reference, tmp_path, index=False)
    assert load_model(directory, torch.float32, with_mtp=False) is not None


def test_index_naming_a_missing_shard(reference, tmp_path):
    directory, _ = _shard(reference, tmp_path)
    (directory / f"model-00002-of-{SHARDS:05d}.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: names shard model-00002-of-00003\.safetensors, which is missing"):
        load_model(directory, torch.float32, with_mtp=False)


def test_index_placing_a_tensor_in_a_shard_that_lacks_it(reference, tmp_path):
    directory, weight_map = _shard(reference, tmp_path)
    name = next(n for n, f in weight_map.items() if f.startswith("model-00001"))
    _edit_index(directory, lambda body: body["weight_map"].update({name: f"model-00003-of-{SHARDS:05d}.safetensors"}))
    with pytest.raises(CheckpointError, match=rf"model-00003-of-00003\.safetensors: lacks 1 tensor\(s\) the index .* puts there, e\.g\. '{name}'"):
        load_model(directory, torch.float32, with_mtp=False)


def test_index_total_size_disagreeing_with_the_shards(reference, tmp_path):
    directory, _ = _shard(reference, tmp_path)
    _edit_index(directory, lambda body: body["metadata"].update(total_size=body["metadata"]["total_size"] + 4))
    with pytest.raises(CheckpointError, match=r"index\.json: total_size \d+ bytes, its shards hold \d+"):
        load_model(directory, torch.float32, with_mtp=False)


def test_a_tensor_in_two_shards_without_an_index(reference, tmp_path):
    directory, _ = _shard(reference, tmp_path, index=False)
    extra = load_file(directory / f"model-00001-of-{SHARDS:05d}.safetensors")
    save_file(extra, directory / "model-extra.safetensors")
    with pytest.raises(CheckpointError, match=r"model-extra\.safetensors: tensor '.*' is also in model-00001-of-00003\.safetensors"):
        load_model(directory, torch.float32, with_mtp=False)


def test_a_truncated_shard(reference, tmp_path):
    directory, _ = _shard(reference, tmp_path)
    shard = directory / f"model-00002-of-{SHARDS:05d}.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model-00002-of-00003\.safetensors: not a readable safetensors file"):
        load_model(directory, torch.float32, with_mtp=False)


def test_a_config_disagreeing_with_the_shapes_names_the_shard(reference, tmp_path):
    directory, weight_map = _shard(reference, tmp_path)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(config | {"vocab_size": config["vocab_size"] * 2}))
    shard = weight_map["backbone.embeddings.weight"]
    with pytest.raises(CheckpointError, match=rf"{shard}: tensor for backbone\.embeddings\.weight has shape \(512, 64\), the model expects \(1024, 64\)"):
        load_model(directory, torch.float32, with_mtp=False)
