"""Pipeline parallel on a local Ray: pp stages (each its own tp / ep group) with micro-batched steps give
the single-process engine's greedy tokens, with prefix caching (each stage restores the Mamba checkpoints
of its own layers) and with MTP speculation (the earlier stages roll their Mamba states back to the tokens
the last stage kept); a dead rank of an early stage is named, not the later stage that could not get its
input."""

from __future__ import annotations


import pytest

ray = pytest.importorskip("ray", reason="the cluster extra is not installed (pip install -e .[cluster])")

from ray_harness import idle_cpus, local_ray as local_ray_cluster  # noqa: E402

from nemodeploy.engine.config import EngineConfig  # noqa: E402
from nemodeploy.engine.core import LLMEngine  # noqa: E402
from nemodeploy.engine.protocol import GenerationRequest, SamplingParams  # noqa: E402
from nemodeploy.engine.ray_executor import EngineWorkerError, RayExecutor  # noqa: E402
from nemodeploy.engine.tiny import tiny_model_dir  # noqa: E402

SHARED = [300 + i for i in range(20)]  # a common prefix: the second request resumes from its checkpoint
PROMPTS = {"a": [5 + i for i in range(7)], "b": [40 + 2 * i for i in range(19)], "c": [200, 7, 9],
           "d": SHARED + [1, 2], "e": SHARED + [3]}
N = 10


@pytest.fixture(scope="module")
def local_ray():
    with local_ray_cluster(4):
        yield


def _config(**overrides) -> EngineConfig:
    return EngineConfig(**{"model": str(tiny_model_dir()), "block_size": 8, "num_kv_blocks": 64, "num_mamba_slots": 4,
                           "max_num_seqs": 4, "max_num_batched_tokens": 24, "max_model_len": 128,
                           "prefix_caching": True, "mamba_checkpoint_interval": 8, **overrides})


def _greedy(engine: LLMEngine) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {rid: [] for rid in PROMPTS}
    for rid, prompt in PROMPTS.items():
        engine.add_request(GenerationRequest(rid, list(prompt), SamplingParams(max_tokens=N, temperature=0,
                                                                              ignore_eos=True)))
        if rid == "d":  # "e" arrives once "d" is cached
            while engine.has_unfinished():
                for out in engine.step():
                    tokens[out.request_id] += out.token_ids
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    return tokens


@pytest.mark.parametrize("tp_size, ep_size, pp_size, speculative_tokens", [(1, 1, 2, 0), (2, 2, 2, 0), (1, 1, 2, 2)])
def test_stages_give_the_single_process_greedy_tokens(local_ray, tp_size, ep_size, pp_size, speculative_tokens):
    config = _config(speculative_tokens=speculative_tokens)
    single = LLMEngine(config)
    expected = _greedy(single)
    executor = RayExecutor(config, tp_size=tp_size, ep_size=ep_size, pp_size=pp_size, stage_layers=[(0, 4), (4, 7)])
    try:
        engine = LLMEngine(config, executor=executor)
        assert _greedy(engine) == expected
        assert engine.stats().prefix_cache_hits == single.stats().prefix_cache_hits > 0
        stats = engine.stats()  # drafts rejected too: the earlier stages rolled back
        assert stats.spec_decode_num_accepted_tokens < stats.spec_decode_num_draft_tokens or not speculative_tokens
    finally:
        executor.shutdown()
    assert idle_cpus(4) == 4


def test_a_dead_rank_of_an_early_stage_is_named(local_ray):
    executor = RayExecutor(_config(), pp_size=2)
    try:
        engine = LLMEngine(_config(), executor=executor)
        engine.add_request(GenerationRequest("a", PROMPTS["a"], SamplingParams(max_tokens=4, temperature=0)))
        engine.step()
        ray.kill(executor.workers[0])  # stage 0: stage 1 then fails to fetch its input
        with pytest.raises(EngineWorkerError, match=rf"engine rank 0 on node {executor.nodes[0]} failed: its worker "
                                                    "process died"):
            engine.step()
    finally:
        executor.shutdown()
    assert idle_cpus(4) == 4
