"""RayExecutor on a local Ray: tp=2 / ep=2 ranks as Ray actors (gloo) give the single-process engine's
greedy tokens, with and without speculative decoding; a dead rank is named; nothing is left behind.
Pipeline stages: test_pp_executor.py."""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray", reason="the cluster extra is not installed (pip install -e .[cluster])")

from ray_harness import idle_cpus, local_ray as local_ray_cluster  # noqa: E402

from nemodeploy.engine.config import EngineConfig  # noqa: E402
from nemodeploy.engine.core import LLMEngine  # noqa: E402
from nemodeploy.engine.protocol import GenerationRequest, SamplingParams  # noqa: E402
from nemodeploy.engine.ray_executor import EngineWorkerError, RayExecutor  # noqa: E402
from nemodeploy.engine.tiny import tiny_model_dir  # noqa: E402

PROMPTS = {"a": [5 + i for i in range(7)], "b": [40 + 2 * i for i in range(19)], "c": [200, 7, 9]}
N = 12


@pytest.fixture(scope="module")
def local_ray():
    with local_ray_cluster(2):
        yield


def _config(speculative_tokens: int = 0) -> EngineConfig:
    return EngineConfig(model=str(tiny_model_dir()), block_size=8, num_kv_blocks=64, num_mamba_slots=4,
                        max_num_seqs=4, max_num_batched_tokens=16, max_model_len=128,
                        speculative_tokens=speculative_tokens)


def _greedy(engine: LLMEngine) -> dict[str, list[int]]:
    for rid, prompt in PROMPTS.items():
        engine.add_request(GenerationRequest(rid, list(prompt), SamplingParams(max_tokens=N, temperature=0,
                                                                              ignore_eos=True)))
    tokens: dict[str, list[int]] = {rid: [] for rid in PROMPTS}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.token_ids
    return tokens


@pytest.mark.parametrize("tp_size, ep_size, speculative_tokens", [(2, 1, 0), (2, 2, 0), (2, 2, 2)])
def test_ranks_give_the_single_process_greedy_tokens(local_ray, tp_size, ep_size, speculative_tokens):
    config = _config(speculative_tokens)
    expected = _greedy(LLMEngine(config))
    executor = RayExecutor(config, tp_size=tp_size, ep_size=ep_size)
    workers = list(executor.workers)
    try:
        engine = LLMEngine(config, executor=executor)
        assert executor.cache_info()["num_kv_blocks"] == config.num_kv_blocks
        assert _greedy(engine) == expected
    finally:
        executor.shutdown()
    for worker in workers:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(worker.node_ip.remote(), timeout=30)
    assert idle_cpus(2) == 2


def test_a_dead_rank_is_named(local_ray):
    config = _config()
    executor = RayExecutor(config, tp_size=2)
    try:
        engine = LLMEngine(config, executor=executor)
        engine.add_request(GenerationRequest("a", PROMPTS["a"], SamplingParams(max_tokens=4, temperature=0)))
        engine.step()
        ray.kill(executor.workers[1])
        deadline = time.monotonic() + 30
        with pytest.raises(EngineWorkerError, match=rf"engine rank 1 on node {executor.nodes[1]} failed"):
            while time.monotonic() < deadline:  # ray.kill returns before the rank is gone
                executor.check()
                time.sleep(0.1)
        with pytest.raises(EngineWorkerError, match=rf"engine rank 1 on node {executor.nodes[1]} failed: its worker process died"):
            engine.step()
    finally:
        executor.shutdown()
    assert idle_cpus(2) == 2
