"""Sampling: filters keep the right tokens, draws follow the distribution, and speculative
acceptance leaves the target distribution unchanged."""

from __future__ import annotations

import torch

from nemodeploy.engine.protocol import SamplingParams
from nemodeploy.engine.sampler import draw, make_generator, probabilities, sample, verify

LOGITS = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))


def test_top_k_and_top_p_keep_the_most_likely_tokens():
    top2 = probabilities(LOGITS[None], SamplingParams(temperature=1.0, top_k=2))[0]
    assert torch.allclose(top2, torch.tensor([2 / 3, 1 / 3, 0, 0]))
    # 0.5 + 0.25 reaches 0.7: the token that crosses top_p is kept, the rest dropped
    nucleus = probabilities(LOGITS[None], SamplingParams(temperature=1.0, top_p=0.7))[0]
    assert torch.allclose(nucleus, torch.tensor([2 / 3, 1 / 3, 0, 0]))


def test_temperature_zero_is_argmax_and_ignores_the_generator():
    assert sample(torch.tensor([0.1, 3.0, 2.0]), SamplingParams(temperature=0), make_generator(1)) == 1


def test_draws_follow_the_distribution_and_repeat_with_the_seed():
    probs = probabilities(LOGITS[None].expand(20000, 4), SamplingParams(temperature=1.0))
    tokens = draw(probs, make_generator(5))
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    assert torch.allclose(freq, LOGITS.exp(), atol=0.015)
    assert torch.equal(draw(probs, make_generator(5)), tokens)


def test_speculative_acceptance_keeps_the_target_distribution():
    """Whatever the draft, the first token out of verify is distributed as the target's p."""
    params = SamplingParams(temperature=1.0)
    logits = LOGITS[None].expand(2, 4)
    gen = make_generator(9)
    for draft in (0, 3):
        counts = torch.zeros(4)
        for _ in range(6000):
            counts[verify(logits, [draft], params, gen)[0]] += 1
        assert torch.allclose(counts / counts.sum(), LOGITS.exp(), atol=0.025)


def test_greedy_verify_accepts_the_agreeing_prefix_and_adds_the_target_token():
    logits = torch.nn.functional.one_hot(torch.tensor([4, 2, 7, 1]), 8).float()
    params, gen = SamplingParams(temperature=0), make_generator(0)
    assert verify(logits, [4, 2, 7], params, gen) == [4, 2, 7, 1]
    assert verify(logits, [4, 5, 7], params, gen) == [4, 2]
    assert verify(logits, [0, 2, 7], params, gen) == [4]
