"""Data-parallel replicas behind one OpenAI server (engine/replicas.py): two engines, each a RayExecutor
rank on a local Ray, served over real HTTP. Greedy output equals the single-process engine; requests go
to the replica with the fewest outstanding, ties round-robin; /metrics sums the replicas; a dead
replica fails only its own requests, gets no new ones and is named in the health report."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import httpx
import pytest

ray = pytest.importorskip("ray", reason="the cluster extra is not installed (pip install -e .[cluster])")

from nemodeploy.engine.async_engine import AsyncEngine  # noqa: E402
from ray_harness import local_ray as local_ray_cluster  # noqa: E402

from nemodeploy.engine.config import EngineConfig  # noqa: E402
from nemodeploy.engine.core import LLMEngine  # noqa: E402
from nemodeploy.engine.protocol import GenerationRequest, SamplingParams  # noqa: E402
from nemodeploy.engine.ray_executor import RayExecutor  # noqa: E402
from nemodeploy.engine.replicas import ReplicaSet  # noqa: E402
from nemodeploy.engine.server import Server, create_app  # noqa: E402
from nemodeploy.engine.tiny import tiny_model_dir  # noqa: E402
from nemodeploy.net import free_port  # noqa: E402

PROMPTS = [[5 + i for i in range(7)], [40 + 2 * i for i in range(19)], [200, 7, 9], [11, 12, 13, 14]]
N = 24  # long enough that four requests sent at once all run at once


@pytest.fixture(scope="module")
def local_ray():
    with local_ray_cluster(2):
        yield


def _config() -> EngineConfig:
    return EngineConfig(model=str(tiny_model_dir()), block_size=8, num_kv_blocks=64, num_mamba_slots=4,
                        max_num_seqs=4, max_num_batched_tokens=32, max_model_len=512)


@pytest.fixture(scope="module")
def expected() -> list[str]:
    engine = LLMEngine(_config())
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(GenerationRequest(str(i), prompt, SamplingParams(max_tokens=N, temperature=0, ignore_eos=True)))
    texts = {str(i): "" for i in range(len(PROMPTS))}
    while engine.has_unfinished():
        for out in engine.step():
            texts[out.request_id] += out.text
    assert len(set(texts.values())) == len(PROMPTS)  # distinct: a request answered by the wrong prompt shows
    return list(texts.values())


@contextlib.contextmanager
def served_replicas(count: int):
    """`count` replicas (one Ray rank each, on its own bundle) behind one real uvicorn server."""
    import uvicorn

    config = _config()
    engines = [AsyncEngine(LLMEngine(config, executor=RayExecutor(config))).start() for _ in range(count)]
    replicas = ReplicaSet(engines)
    app = create_app(Server(replicas, engines[0].engine.tokenizer, "tiny", config.max_model_len))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", replicas
    finally:
        server.should_exit = True
        thread.join(15)
        replicas.shutdown()


async def _completions(url: str, prompts: list[list[int]], max_tokens: int = N) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        return await asyncio.gather(*(client.post(f"{url}/v1/completions", json={
            "model": "tiny", "prompt": p, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})
            for p in prompts))


def _text(response: httpx.Response) -> str:
    response.raise_for_status()
    return response.json()["choices"][0]["text"]


def _finished(replicas: ReplicaSet) -> list[int]:
    return [sum(e.stats().requests_finished_total.values()) for e in replicas.engines]


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_replicas_serve_the_single_process_greedy_tokens_spread_evenly(local_ray, expected):
    with served_replicas(2) as (url, replicas):
        responses = asyncio.run(_completions(url, PROMPTS))
        assert [_text(r) for r in responses] == expected
        assert _finished(replicas) == [2, 2]  # four at once over two idle replicas: two each
        metrics = httpx.get(f"{url}/metrics").text
        assert _metric(metrics, "vllm:generation_tokens_total") == len(PROMPTS) * N  # both replicas, summed
        assert _metric(metrics, "nemodeploy:kv_blocks_total") == 2 * _config().num_kv_blocks


def test_a_request_goes_to_the_replica_with_the_fewest_outstanding(local_ray):
    async def scenario(replicas: ReplicaSet) -> tuple[list[int], list[int]]:
        long = GenerationRequest("long", PROMPTS[0], SamplingParams(max_tokens=200, temperature=0, ignore_eos=True))
        stream = replicas.generate(long)
        await stream.__anext__()  # admitted, and running on replica 0
        busy = list(replicas.outstanding)
        for i in range(3):  # one after the other: replica 1 has none outstanding each time
            request = GenerationRequest(f"short-{i}", PROMPTS[1], SamplingParams(max_tokens=2, temperature=0))
            async for _ in replicas.generate(request):
                pass
        async for _ in stream:
            pass
        return busy, _finished(replicas)

    with served_replicas(2) as (_, replicas):
        busy, finished = asyncio.run(scenario(replicas))
    assert busy == [1, 0]
    assert finished == [1, 3]


def test_a_dead_replica_fails_only_its_requests_and_is_reported(local_ray, expected):
    with served_replicas(2) as (url, replicas):
        async def scenario():
            running = asyncio.ensure_future(_completions(url, [PROMPTS[0], PROMPTS[1]], max_tokens=400))
            deadline = time.monotonic() + 60
            # both decoding: a request whose replica dies before its first token would go to the other one
            while not all(e.stats().generation_tokens_total for e in replicas.engines):
                assert time.monotonic() < deadline and not running.done(), "the two requests never ran at once"
                await asyncio.sleep(0.01)
            ray.kill(replicas.engines[1].engine.executor.workers[0])
            return await running

        on_live, on_dead = sorted(asyncio.run(scenario()), key=lambda r: r.status_code)
        assert on_live.status_code == 200 and on_live.json()["usage"]["completion_tokens"] == 400
        assert on_dead.status_code == 503  # its request failed, nothing else did
        replicas.probe()
        status, body = replicas.report()
        assert (status, body["status"]) == (200, "degraded")
        assert [r["status"] for r in body["replicas"]] == ["ok", "failed"]
        assert body["replicas"][1]["rank"] == 0 and "engine rank 0" in body["replicas"][1]["error"]
        responses = asyncio.run(_completions(url, PROMPTS))  # all on the live replica now
        assert [_text(r) for r in responses] == expected
        assert httpx.get(f"{url}/health").status_code == 200
