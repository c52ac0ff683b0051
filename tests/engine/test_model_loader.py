"""Loader: sharded checkpoints, missing tensors, and the tiny checkpoint through transformers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_harness import Runner, hf_logits, prompt
from nemodeploy.engine.loader import CheckpointError, load_model


def test_sharded_checkpoint_loads_like_single_file(reference, tmp_path):
    directory, _ = reference("latent_g2_kv2")
    tensors = load_file(directory / "model.safetensors")
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, tmp_path / file, metadata={"format": "pt"})
        weight_map |= {n: file for n in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    single = load_model(directory, torch.float32, with_mtp=False).state_dict()
    sharded = load_model(tmp_path, torch.float32, with_mtp=False).state_dict()
    assert single.keys() == sharded.keys()
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=0, atol=0)


def test_missing_tensor_is_named(reference, tmp_path):
    directory, _ = reference("latent_g2_kv2")
    tensors = load_file(directory / "model.safetensors")
    del tensors["backbone.layers.0.mixer.A_log"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    with pytest.raises(CheckpointError, match="backbone.layers.0.mixer.A_log"):
        load_model(tmp_path, torch.float32, with_mtp=False)


def test_tiny_checkpoint_round_trips_through_transformers(tmp_path):
    from transformers import AutoTokenizer, NemotronHForCausalLM

    from nemodeploy.engine.tiny import write_tiny_checkpoint

    directory = write_tiny_checkpoint(tmp_path / "tiny", seed=0)
    hf = NemotronHForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    model = load_model(directory, torch.float32)
    assert model.mtp is not None  # the mtp.* tensors are there and load
    tokens = prompt(12, seed=0)
    torch.testing.assert_close(Runner(model).step([(0, tokens)])[0], hf_logits(hf, tokens), atol=2e-4, rtol=1e-4)

    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert 256 < len(tokenizer) <= model.config.vocab_size
    messages = [{"role": "user", "content": "Hello there"}]
    on = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    off = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert on.endswith("<|im_start|>assistant\n<think>\n") and off.endswith("<|im_start|>assistant\n<think></think>")
    ids = tokenizer(on)["input_ids"]
    assert tokenizer.convert_tokens_to_ids("<think>") in ids and tokenizer.decode(ids) == on


def test_tiny_checkpoint_is_deterministic(tmp_path):
    from nemodeploy.engine.tiny import write_tiny_checkpoint

    a, b = write_tiny_checkpoint(tmp_path / "a"), write_tiny_checkpoint(tmp_path / "b")
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_tiny_mtp_head_runs_over_its_own_kv_cache(tmp_path):
    """Draft logits of the tiny MTP head: a prompt at once equals the same prompt in two chunks."""
    from nemodeploy.engine.batch import BatchMetadata
    from nemodeploy.engine.cache import HybridCache
    from nemodeploy.engine.tiny import write_tiny_checkpoint

    model = load_model(write_tiny_checkpoint(tmp_path / "tiny"), torch.float32)
    tokens = torch.tensor(prompt(10, seed=3))
    hidden = torch.randn(10, model.config.hidden_size, generator=torch.Generator().manual_seed(0))

    def drafts(chunks):
        cache = HybridCache(model.config, 8, 4, 1, torch.float32, include_mtp=True)
        out, done = [], 0
        for n in chunks:
            batch = BatchMetadata.build([n], [done], [list(range(8))], [0], block_size=4)
            out.append(model.compute_logits(model.mtp_forward(tokens[done : done + n], hidden[done : done + n], batch, cache)))
            done += n
        return torch.cat(out)

    whole = drafts([10])
    assert whole.shape == (10, model.config.vocab_size) and whole.std() > 0.1
    torch.testing.assert_close(drafts([4, 6]), whole, atol=1e-5, rtol=1e-5)
