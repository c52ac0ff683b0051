"""Greedy generation through the HTTP API equals transformers' greedy generate (fp32)."""

from __future__ import annotations


import httpx
import pytest

from nemodeploy.engine.config import EngineConfig

N = 32
# prompts of different lengths (token ids of the tiny vocabulary), longer than the prefill budget
PROMPTS = [[11 + i for i in range(n)] for n in (3, 9, 17, 24, 31, 40, 5, 13)]


def _config(model_dir, **overrides) -> EngineConfig:
    values = dict(model=str(model_dir), dtype="float32", block_size=8, num_kv_blocks=96, num_mamba_slots=8,
                  max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256)
    return EngineConfig(**(values | overrides))


def _complete(url: str, model: str, prompt: list[int]) -> tuple[list[int], str]:
    body = {"model": model, "prompt": prompt, "max_tokens": N, "temperature": 0, "ignore_eos": True}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    r.raise_for_status()
    return r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]


def _decode(model_dir, ids: list[int]) -> str:
    from nemodeploy.engine.tokenizer import Tokenizer

    return Tokenizer(model_dir).decode(ids)


@pytest.mark.parametrize("which", ["latent_dir", "dense_dir"])
def test_single_request_greedy_equals_transformers(which, request, start_server, greedy_reference):
    model_dir = request.getfixturevalue(which)
    with start_server(_config(model_dir)) as srv:
        text, reason = _complete(srv.url, srv.model_name, PROMPTS[2])
    assert reason == "length"
    assert text == _decode(model_dir, greedy_reference(model_dir, PROMPTS[2], N))


@pytest.mark.parametrize("speculative_tokens", [0, 5])
def test_eight_concurrent_requests_with_chunked_prefill_equal_transformers(
    latent_dir, speculative_tokens, start_server, greedy_reference
):
    """Requests join and leave the batch at different steps; prompts are split into 16-token chunks."""
    config = _config(latent_dir, max_num_batched_tokens=16, speculative_tokens=speculative_tokens)
    with start_server(config) as srv:
        texts = srv.greedy_completions(PROMPTS, N)
        metrics = srv.wait_idle()
    for prompt, text in zip(PROMPTS, texts):
        assert text == _decode(latent_dir, greedy_reference(latent_dir, prompt, N))
    assert metrics["nemodeploy:kv_blocks_free"] == metrics["nemodeploy:kv_blocks_total"]
    assert metrics["vllm:generation_tokens_total"] == N * len(PROMPTS)
    drafted = metrics["vllm:spec_decode_num_draft_tokens_total"]
    assert (drafted > 0) == (speculative_tokens > 0)
    expected_rate = metrics["vllm:spec_decode_num_accepted_tokens_total"] / drafted if drafted else 0.0
    assert metrics["nemodeploy:spec_decode_acceptance_rate"] == pytest.approx(expected_rate)
