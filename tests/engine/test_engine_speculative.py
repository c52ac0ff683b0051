"""Speculative decoding: verify accepts exactly the drafts the target agrees with, and the Mamba
state rolled back after a rejection leaves the output identical to plain greedy decoding.

To exercise acceptance and rollback at chosen positions (a random or briefly distilled MTP
head is right only now and then), these tests swap each step's drafts for an oracle's (the
reference continuation with every third draft corrupted). Everything else is the real engine;
tests/server/test_mtp_acceptance.py checks the real MTP head's drafts.
"""

from __future__ import annotations

import functools

import torch

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.core import LLMEngine
from nemodeploy.engine.executor import LocalExecutor
from nemodeploy.engine.protocol import GenerationRequest, SamplingParams
from nemodeploy.engine.tiny import tiny_model_dir

N = 24
K = 3
PROMPTS = {"a": [5 + i for i in range(7)], "b": [40 + 2 * i for i in range(19)], "c": [200, 7, 9]}


@functools.lru_cache(maxsize=1)
def greedy_references() -> dict[str, list[int]]:
    from transformers import NemotronHForCausalLM

    model = NemotronHForCausalLM.from_pretrained(str(tiny_model_dir()), dtype=torch.float32).eval()
    refs = {}
    for rid, prompt in PROMPTS.items():
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=N + K, min_new_tokens=N + K,
                                 do_sample=False, pad_token_id=0)
        refs[rid] = out[0, len(prompt):].tolist()
    return refs


class OracleDrafts(LocalExecutor):
    """The real runner, whose MTP proposals are replaced by the reference's next tokens."""

    def __init__(self, config: EngineConfig, refs: dict[str, list[int]]):
        super().__init__(config)
        self.refs, self.produced, self.steps = refs, {rid: 0 for rid in refs}, 0

    def execute(self, step):
        results = super().execute(step)
        self.steps += 1
        for rid, result in results.items():
            self.produced[rid] += len(result.tokens)
            if result.drafts:
                at = self.produced[rid]
                drafts = self.refs[rid][at : at + K]
                if self.steps % 3 == 0:  # some steps: one wrong draft in the middle
                    drafts[1] = (drafts[1] + 1) % 512
                result.drafts = drafts
        return results


def _run(engine: LLMEngine, max_tokens: int = N) -> dict[str, list[int]]:
    for rid, prompt in PROMPTS.items():
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        engine.add_request(GenerationRequest(rid, list(prompt), params))
    out: dict[str, list[int]] = {rid: [] for rid in PROMPTS}
    for _ in range(10 * N):
        if not engine.has_unfinished():
            break
        for o in engine.step():
            out[o.request_id] += o.token_ids
    return out


def _config(**overrides) -> EngineConfig:
    values = dict(model=str(tiny_model_dir()), dtype="float32", block_size=4, num_kv_blocks=64, num_mamba_slots=4,
                  max_num_seqs=4, max_num_batched_tokens=12, speculative_tokens=K)
    return EngineConfig(**(values | overrides))


def test_accepted_drafts_and_rollback_keep_greedy_output_exact():
    refs = greedy_references()
    config = _config()
    engine = LLMEngine(config, executor=OracleDrafts(config, refs))
    out = _run(engine)
    for rid in PROMPTS:
        assert out[rid] == refs[rid][:N]
    stats = engine.stats()
    assert 0 < stats.spec_decode_num_accepted_tokens < stats.spec_decode_num_draft_tokens
    # fewer steps than tokens: several tokens per step were accepted
    assert engine.executor.steps < N + 4
    assert stats.kv_blocks_free == stats.kv_blocks_total and stats.mamba_slots_free == stats.mamba_slots_total


def test_accepted_tokens_never_pass_max_tokens():
    """A verify step may accept more drafts than max_tokens leaves room for: the surplus rolls back."""
    refs = greedy_references()
    config = _config()
    engine = LLMEngine(config, executor=OracleDrafts(config, refs))
    out = _run(engine, max_tokens=5)
    for rid in PROMPTS:
        assert out[rid] == refs[rid][:5]
    assert engine.stats().requests_finished_total == {"length": 3}


def test_sampled_speculation_is_reproducible_with_a_seed():
    refs = greedy_references()
    config = _config()

    def sampled() -> list[int]:
        engine = LLMEngine(config, executor=OracleDrafts(config, refs))
        params = SamplingParams(max_tokens=12, temperature=0.7, seed=11, ignore_eos=True)
        engine.add_request(GenerationRequest("a", list(PROMPTS["a"]), params))
        tokens = []
        while engine.has_unfinished():
            for o in engine.step():
                tokens += o.token_ids
        return tokens

    first = sampled()
    assert len(first) == 12
    assert sampled() == first
