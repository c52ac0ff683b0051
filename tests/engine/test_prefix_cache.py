"""Hybrid prefix caching: KV pages shared by prefix hash, Mamba state resumed from checkpoints.

The specification is that caching changes how much is computed, never what is generated:
greedy tokens are identical with caching on and off, whatever the sharing, eviction,
preemption or speculation in between.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from nemodeploy.engine.block_manager import BlockAllocator, CheckpointPool, chain_hashes
from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.core import LLMEngine
from nemodeploy.engine.protocol import GenerationRequest, SamplingParams
from nemodeploy.engine.tiny import tiny_model_dir


def test_equal_prefixes_hash_equal_and_a_changed_token_changes_every_later_hash():
    a = chain_hashes(list(range(40)), 40, 8, [])
    b = chain_hashes(list(range(40)), 40, 8, [])
    c = chain_hashes([*range(11), 99, *range(12, 40)], 40, 8, [])
    assert len(a) == 5 and a == b
    assert a[0] == c[0] and all(x != y for x, y in zip(a[1:], c[1:]))


def test_shared_pages_are_reference_counted_and_freed_pages_stay_cached_until_reused():
    blocks = BlockAllocator(num_blocks=4, block_size=4)
    first: list[int] = []
    blocks.grow(first, 8)
    hashes = chain_hashes(list(range(8)), 8, 4, [])
    for page, h in zip(first, hashes):
        blocks.register(page, h)
    second: list[int] = []
    blocks.share(second, blocks.cached_prefix(hashes))
    pages = list(first)
    assert second == pages and blocks.num_free == 2
    blocks.release(first)
    assert blocks.num_free == 2  # the second sequence still holds both pages
    blocks.release(second)
    assert blocks.num_free == 4 and blocks.cached_prefix(hashes) == pages  # free, yet still found
    other: list[int] = []
    blocks.grow(other, 12)  # takes the two never-used pages, then reclaims the last page of the prefix
    assert blocks.cached_prefix(hashes) == pages[:1]


def test_checkpoints_evict_the_least_recently_used_and_are_found_only_once_published():
    pool = CheckpointPool(2)
    a, b = pool.reserve(), pool.reserve()
    pool.publish(b"a", a)
    assert pool.find(b"b") is None
    pool.publish(b"b", b)
    pool.find(b"a")  # a is now the most recently used
    c = pool.reserve()
    assert c == b and pool.find(b"b") is None and pool.find(b"a") == a


def _engine(**overrides) -> LLMEngine:
    values = dict(model=str(tiny_model_dir()), dtype="float32", block_size=8, num_kv_blocks=96, num_mamba_slots=4,
                  max_num_seqs=4, max_num_batched_tokens=64, max_model_len=256)
    values.update(overrides)
    return LLMEngine(EngineConfig(**values))


def _run(engine: LLMEngine, prompts: list[list[int]], max_tokens: int = 6, stagger: bool = True) -> list[list[int]]:
    """Greedy completions; with `stagger` each request starts after the previous one finished."""
    outputs: dict[str, list[int]] = {}
    batches = [[i] for i in range(len(prompts))] if stagger else [list(range(len(prompts)))]
    for batch in batches:
        for i in batch:
            engine.add_request(GenerationRequest(str(i), prompts[i], SamplingParams(max_tokens=max_tokens, temperature=0,
                                                                                    ignore_eos=True)))
        while engine.has_unfinished():
            for out in engine.step():
                outputs.setdefault(out.request_id, []).extend(out.token_ids)
    return [outputs[str(i)] for i in range(len(prompts))]


def _agent_prompts(seed: int = 0) -> list[list[int]]:
    """A long shared system prompt, then turns that each extend the previous one, and strangers."""
    vocab = json.loads((tiny_model_dir() / "config.json").read_text())["vocab_size"]
    rng = random.Random(seed)
    system = [rng.randrange(5, vocab) for _ in range(70)]
    turns = [system + [rng.randrange(5, vocab) for _ in range(n)] for n in (5, 19, 40)]
    turns.append(turns[-1] + [rng.randrange(5, vocab) for _ in range(23)])
    strangers = [[rng.randrange(5, vocab) for _ in range(50)]]
    return turns + strangers


@pytest.mark.parametrize("speculative_tokens", [0, 3])
def test_greedy_tokens_are_identical_with_and_without_prefix_caching(speculative_tokens):
    plain = _engine(speculative_tokens=speculative_tokens)
    prompts = _agent_prompts()
    expected = _run(plain, prompts)
    cached = _engine(speculative_tokens=speculative_tokens, prefix_caching=True, mamba_checkpoint_interval=16)
    assert _run(cached, prompts) == expected
    stats = cached.stats()
    # every turn after the first resumes at least from the shared system prompt's last checkpoint (64 tokens)
    assert stats.prefix_cache_hits >= 64 * 3
    assert stats.prefix_cache_queries == sum(len(p) for p in prompts)
    assert 0 < stats.mamba_checkpoints_used <= stats.mamba_checkpoints_total and stats.mamba_checkpoint_bytes > 0


def test_identical_under_eviction_and_concurrency():
    """One checkpoint and few pages: cached prefixes are evicted mid-run; still the same tokens."""
    plain = _engine(num_kv_blocks=40)
    prompts = _agent_prompts(seed=1)
    expected = _run(plain, prompts, stagger=False)
    cached = _engine(num_kv_blocks=40, prefix_caching=True, mamba_checkpoint_interval=16, num_mamba_checkpoints=1)
    assert _run(cached, prompts, stagger=False) == expected
    assert _run(cached, prompts) == _run(plain, prompts)


def _state_after_prompt(engine: LLMEngine, prompt: list[int], request_id: str) -> list[torch.Tensor]:
    """Every Mamba layer's conv and SSM state after the prompt (the tiny model's greedy tokens barely
    depend on them, so the state itself is what shows a wrong resume)."""
    runner, slots = engine.executor.runner, {}
    execute = runner.execute

    def recording(step):
        slots.update({c.request_id: c.slot for c in step.chunks})
        return execute(step)

    runner.execute = recording
    engine.add_request(GenerationRequest(request_id, prompt, SamplingParams(max_tokens=1, temperature=0)))
    while engine.has_unfinished():
        engine.step()
    runner.execute = execute
    slot = slots[request_id]  # released, but not overwritten until another request takes it
    return [t[slot].clone() for key in runner.cache.conv for t in (runner.cache.conv[key], runner.cache.ssm[key])]


def test_a_resumed_request_ends_its_prompt_in_the_same_mamba_state_as_a_full_prefill():
    prompts = _agent_prompts()
    plain, cached = _engine(), _engine(prefix_caching=True, mamba_checkpoint_interval=16)
    _state_after_prompt(cached, prompts[0], "warm")
    for turn in prompts[1:4]:
        expected, resumed = _state_after_prompt(plain, turn, "t"), _state_after_prompt(cached, turn, "t")
        for e, r in zip(expected, resumed):
            torch.testing.assert_close(r, e, rtol=1e-4, atol=1e-5)
    assert cached.stats().prefix_cache_hits >= 3 * 64


def test_a_resumed_request_computes_only_what_follows_its_cached_prefix():
    engine = _engine(prefix_caching=True, mamba_checkpoint_interval=16)
    prompt = _agent_prompts()[0]  # 75 tokens
    _run(engine, [prompt])
    engine.add_request(GenerationRequest("again", prompt, SamplingParams(max_tokens=1, temperature=0)))
    first = engine.scheduler.schedule().chunks[0]
    # checkpoints at 16, 32, 48, 64: the request resumes at 64 and computes 11 tokens
    assert (first.start_pos, len(first.token_ids), first.restore_checkpoint is not None) == (64, 11, True)


def test_checkpoint_interval_must_be_a_multiple_of_the_block_size():
    with pytest.raises(ValueError, match="multiple of block_size"):
        EngineConfig(model="m", block_size=16, prefix_caching=True, mamba_checkpoint_interval=24)
