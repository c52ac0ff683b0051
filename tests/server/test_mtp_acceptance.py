"""The tiny model's distilled MTP head drafts tokens the main model accepts, over the real HTTP API.

tiny_model_dir() trains the MTP head against the main model (engine/tiny.py,
`distill_mtp_head`), so speculative decoding must report accepted drafts in /metrics while
greedy text stays exactly that of plain decoding.
"""

from __future__ import annotations


import pytest

from nemodeploy.engine.config import EngineConfig

N = 32
K = 3
# the random head gets 1 of 555 drafts accepted (0.002) on these requests, the distilled one 0.071
MIN_ACCEPTANCE_RATE = 0.03
# token-id prompts of different lengths, none of them seen in the distillation (its prompts are seeded random)
PROMPTS = [[13 + 7 * i % 500 for i in range(n)] for n in (4, 7, 11, 16, 23, 5)]


def _config(model_dir, speculative_tokens: int) -> EngineConfig:
    return EngineConfig(model=str(model_dir), dtype="float32", block_size=8, num_kv_blocks=96, num_mamba_slots=8,
                        max_num_seqs=8, max_num_batched_tokens=64, max_model_len=256,
                        speculative_tokens=speculative_tokens)


def _serve_greedy(start_server, model_dir, speculative_tokens: int) -> tuple[list[str], dict[str, float]]:
    with start_server(_config(model_dir, speculative_tokens)) as srv:
        texts = srv.greedy_completions(PROMPTS, N)
        return texts, srv.wait_idle()


def test_distilled_mtp_drafts_are_accepted_and_greedy_text_is_unchanged(latent_dir, start_server):
    plain, _ = _serve_greedy(start_server, latent_dir, 0)
    speculative, metrics = _serve_greedy(start_server, latent_dir, K)
    assert speculative == plain
    drafted = metrics["vllm:spec_decode_num_draft_tokens_total"]
    accepted = metrics["vllm:spec_decode_num_accepted_tokens_total"]
    rate = accepted / drafted
    print(f"MTP acceptance on the tiny model (k={K}, {len(PROMPTS)} greedy requests x {N} tokens): "
          f"{int(accepted)}/{int(drafted)} drafts accepted, rate {rate:.3f}")
    assert drafted > 0
    assert accepted > 0
    assert rate >= MIN_ACCEPTANCE_RATE
    assert metrics["nemodeploy:spec_decode_acceptance_rate"] == pytest.approx(rate)
    assert metrics["vllm:generation_tokens_total"] == N * len(PROMPTS)
