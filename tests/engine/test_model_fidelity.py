"""The engine model against transformers' NemotronHForCausalLM, fp32.

dt clamp: transformers clamps dt >= time_step_min in its chunked (prefill) path only; the
engine applies config.time_step_limit ((0, inf)) everywhere, as vLLM does. The reference
weights (tiny.randomize_) keep dt far above time_step_min, so the clamp never binds and the
comparison at every position, prefill or decode, is exact up to fp32 rounding.
"""

from __future__ import annotations

import pytest
import torch

from model_harness import VARIANTS, Runner, hf_logits, prompt
from nemodeploy.engine.loader import load_model

ATOL = 2e-4


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_and_every_decode_step_match_transformers(reference, variant):
    directory, hf = reference(variant)
    runner = Runner(load_model(directory, torch.float32, with_mtp=False))
    tokens = prompt(13, seed=2)
    steps = [runner.step([(0, tokens)])[0]]
    for _ in range(5):
        tokens.append(int(steps[-1][-1].argmax()))
        steps.append(runner.step([(0, tokens[-1:])], num_decodes=1)[0])
    expected = hf_logits(hf, tokens)
    close(torch.cat(steps), expected)
    assert expected.std() > 0.5  # the reference is far from trivial


def test_chunked_prefill_equals_unchunked(reference):
    directory, hf = reference("latent_g2_kv2")
    runner = Runner(load_model(directory, torch.float32, with_mtp=False))
    tokens = prompt(19, seed=3)
    logits = [runner.step([(0, tokens[a:b])])[0] for a, b in ((0, 5), (5, 14), (14, 19))]
    close(torch.cat(logits), hf_logits(hf, tokens))


def test_mixed_batch_equals_each_sequence_alone(reference):
    directory, hf = reference("plain_g4_kv1")
    model = load_model(directory, torch.float32, with_mtp=False)
    prompts = [prompt(n, seed=10 + n) for n in (3, 11, 7)]
    runner = Runner(model)
    runner.step([(0, prompts[0]), (1, prompts[1][:6])])
    # seq 0 decodes while seq 1 prefills its second chunk and seq 2 its whole prompt
    nxt = prompt(1, seed=99)
    out = runner.step([(0, nxt), (1, prompts[1][6:]), (2, prompts[2])], num_decodes=1)
    close(out[0][-1], hf_logits(hf, prompts[0] + nxt)[-1])
    close(out[1], hf_logits(hf, prompts[1])[6:])
    close(out[2], hf_logits(hf, prompts[2]))


def test_verify_then_commit_rolls_back_rejected_drafts(reference):
    directory, hf = reference("g1_kv4")
    runner = Runner(load_model(directory, torch.float32, with_mtp=False), num_spec_tokens=3)
    a, b = prompt(9, seed=4), prompt(6, seed=5)
    runner.step([(0, a), (1, b)])
    drafts_a, drafts_b = prompt(4, seed=6), prompt(4, seed=7)
    out = runner.step([(0, drafts_a), (1, drafts_b)], num_decodes=2, save_spec_states=True)
    close(out[0], hf_logits(hf, a + drafts_a)[-4:])
    close(out[1], hf_logits(hf, b + drafts_b)[-4:])
    kept = torch.tensor([2, 4])  # seq 0 keeps its input token + 1 draft; seq 1 keeps everything
    runner.cache.commit(torch.tensor([0, 1]), kept)
    runner.cached = [len(a) + 2, len(b) + 4]
    nxt_a, nxt_b = prompt(1, seed=8), prompt(1, seed=9)
    out = runner.step([(0, nxt_a), (1, nxt_b)], num_decodes=2)
    close(out[0][-1], hf_logits(hf, a + drafts_a[:2] + nxt_a)[-1])
    close(out[1][-1], hf_logits(hf, b + drafts_b + nxt_b)[-1])
