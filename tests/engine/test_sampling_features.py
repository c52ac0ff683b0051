"""Penalties, min_tokens, log-probabilities and grammar-constrained output in the engine.

References: transformers' own logits processors for the repetition penalty, OpenAI's
documented formula for presence / frequency penalties, transformers' forward for
log-probabilities, and the JSON schema itself for constrained output.
"""

from __future__ import annotations

import json

import pytest
import torch

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.core import LLMEngine
from nemodeploy.engine.protocol import GenerationRequest, SamplingParams
from nemodeploy.engine.sampler import apply_masks, apply_penalties
from nemodeploy.engine.structured import GrammarError
from nemodeploy.engine.tiny import tiny_model_dir


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0))
    history = [3, 7, 7, 40, 12]
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([history]), logits.clone())
    got = apply_penalties(logits, SamplingParams(repetition_penalty=1.3), history, prompt_len=2)
    torch.testing.assert_close(got, expected)


def test_presence_and_frequency_penalties_follow_openais_formula_on_output_tokens_only():
    logits = torch.zeros(1, 10)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    got = apply_penalties(logits, params, history=[1, 1, 2, 2, 2, 3], prompt_len=2)[0]  # output: 2, 2, 2, 3
    expected = torch.zeros(10)
    expected[2] = -(3 * 0.25 + 0.5)
    expected[3] = -(1 * 0.25 + 0.5)
    torch.testing.assert_close(got, expected)


def test_masks_ban_ids_and_keep_only_what_the_bitmask_allows():
    logits = torch.zeros(1, 40)
    words = [0, 1 << 2]  # only token 34 (word 1, bit 2)
    assert torch.isfinite(apply_masks(logits, [], words)[0]).nonzero().flatten().tolist() == [34]
    assert torch.isinf(apply_masks(logits, [5, 6], None)[0, [5, 6]]).all()


def _engine(**overrides) -> LLMEngine:
    values = dict(model=str(tiny_model_dir()), dtype="float32", block_size=8, num_kv_blocks=64, num_mamba_slots=4,
                  max_num_seqs=4, max_num_batched_tokens=128, max_model_len=512)
    values.update(overrides)
    return LLMEngine(EngineConfig(**values))


def _generate(engine: LLMEngine, requests: list[GenerationRequest]) -> dict[str, list]:
    outs: dict[str, list] = {r.request_id: [] for r in requests}
    for request in requests:
        engine.add_request(request)
    while engine.has_unfinished():
        for out in engine.step():
            outs[out.request_id].append(out)
    return outs


def _tokens(outs) -> list[int]:
    return [t for o in outs for t in o.token_ids]


PROMPT = [5, 17, 42, 99, 7, 13, 64, 21]


def test_min_tokens_masks_eos_and_stop_ids_until_reached():
    engine = _engine()
    first = _tokens(_generate(engine, [GenerationRequest("g", PROMPT, SamplingParams(max_tokens=1, temperature=0))])["g"])[0]
    params = dict(max_tokens=8, temperature=0, stop_token_ids=[first])
    stopped = _generate(engine, [GenerationRequest("a", PROMPT, SamplingParams(**params))])["a"]
    assert _tokens(stopped) == [first] and stopped[-1].finish_reason == "stop"
    held = _tokens(_generate(engine, [GenerationRequest("b", PROMPT, SamplingParams(**params, min_tokens=4))])["b"])
    assert len(held) >= 4 and first not in held[:4]


def test_logprobs_are_the_models_own_distribution_as_transformers_computes_it():
    from transformers import AutoModelForCausalLM

    engine = _engine()
    outs = _generate(engine, [GenerationRequest("l", PROMPT, SamplingParams(max_tokens=3, temperature=0, logprobs=4))])["l"]
    tokens, logprobs = _tokens(outs), [lp for o in outs for lp in o.logprobs]
    assert [lp.token for lp in logprobs] == tokens
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir()), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([PROMPT + tokens])).logits[0].float(), dim=-1)
    for i, lp in enumerate(logprobs):
        row = reference[len(PROMPT) - 1 + i]
        assert lp.logprob == pytest.approx(float(row[lp.token]), abs=1e-3)
        assert len(lp.top) == 4 and lp.top[0][0] == lp.token  # greedy: the chosen token is the most likely
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)


def test_requests_with_penalties_or_logprobs_run_without_drafts_and_match_plain_greedy():
    plain = _tokens(_generate(_engine(), [GenerationRequest("p", PROMPT, SamplingParams(max_tokens=10, temperature=0,
                                                                                        ignore_eos=True))])["p"])
    spec = _engine(speculative_tokens=3)
    outs = _generate(spec, [GenerationRequest("s", PROMPT, SamplingParams(max_tokens=10, temperature=0, ignore_eos=True,
                                                                         logprobs=0))])["s"]
    assert _tokens(outs) == plain and spec.stats().spec_decode_num_draft_tokens == 0


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "count": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["name", "count"], "additionalProperties": False}


def test_json_schema_output_parses_and_validates_beside_an_unconstrained_request():
    import jsonschema

    engine = _engine()
    alone = _tokens(_generate(engine, [GenerationRequest("u", PROMPT, SamplingParams(max_tokens=12, temperature=0,
                                                                                     ignore_eos=True))])["u"])
    guided = GenerationRequest("j", PROMPT[:5], SamplingParams(max_tokens=120, temperature=0.8, seed=3,
                                                               guided={"json_schema": SCHEMA}))
    free = GenerationRequest("u", PROMPT, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    outs = _generate(engine, [guided, free])
    assert _tokens(outs["u"]) == alone  # the grammar's mask touches only its own request
    assert outs["j"][-1].finish_reason == "stop"
    jsonschema.validate(json.loads("".join(o.text for o in outs["j"])), SCHEMA)


def test_an_invalid_grammar_is_refused_when_the_request_is_added():
    engine = _engine()
    with pytest.raises(GrammarError, match="invalid json schema"):
        engine.add_request(GenerationRequest("x", PROMPT, SamplingParams(guided={"json_schema": {"type": "nonsense"}})))
    assert not engine.has_unfinished()
