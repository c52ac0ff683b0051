"""An error inside the engine loop fails the request it belongs to and nothing else: the engine
keeps serving and /health stays 200. Faults are injected into the real engine of a real server
(its executor's model step, its per-request output processing), marked by a poison token."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.core import MAX_FAILED_STEPS

POISON = 509  # a prompt that starts with this token id is the one the injected fault hits


def config(latent_dir) -> EngineConfig:
    return EngineConfig(model=str(latent_dir), dtype="float32", block_size=8, num_kv_blocks=64, num_mamba_slots=2,
                        max_num_seqs=2, max_num_batched_tokens=64, max_model_len=128, served_model_name="tiny")


@pytest.fixture(scope="module")
def srv(latent_dir, start_server):
    with start_server(config(latent_dir)) as running:
        yield running


def complete(srv, prompt: list[int], max_tokens: int = 4, **fields) -> httpx.Response:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, **fields}
    return httpx.post(f"{srv.url}/v1/completions", json=body, timeout=120)


def poisoned(chunk_or_seq) -> bool:
    return chunk_or_seq.token_ids[:1] == [POISON]


def fail_model_steps_with_poison(monkeypatch, engine) -> None:
    real = engine.executor.execute

    def execute(step):
        if any(chunk.start_pos == 0 and poisoned(chunk) for chunk in step.chunks):
            raise RuntimeError("injected fault in the model step")
        return real(step)

    monkeypatch.setattr(engine.executor, "execute", execute)


def fail_output_of_poison(monkeypatch, engine, after: int = 0) -> None:
    """The poisoned request's output processing raises from its `after`-th output on."""
    real = engine._emit
    seen = {"n": 0}

    def emit(seq, *args, **kwargs):
        if poisoned(seq):
            seen["n"] += 1
            if seen["n"] > after:
                raise ValueError("injected fault in one request's output")
        return real(seq, *args, **kwargs)

    monkeypatch.setattr(engine, "_emit", emit)


def error_count(srv) -> float:
    return srv.metrics()['vllm:request_success_total{finished_reason="error"}']


def test_a_failed_model_step_fails_its_request_and_the_engine_serves_on(srv, monkeypatch):
    fail_model_steps_with_poison(monkeypatch, srv.engine.engine)
    errors = error_count(srv)
    r = complete(srv, [POISON, 1, 2])
    assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
    assert "RuntimeError" in r.json()["error"]["message"] and "injected" not in r.json()["error"]["message"]
    assert httpx.get(f"{srv.url}/health").status_code == 200
    assert complete(srv, [1, 2, 3]).json()["usage"]["completion_tokens"] == 4
    m = srv.wait_idle()
    assert error_count(srv) == errors + 1
    assert m["nemodeploy:kv_blocks_free"] == m["nemodeploy:kv_blocks_total"]


def test_a_fault_in_one_requests_output_leaves_the_others_running(srv, monkeypatch):
    fail_output_of_poison(monkeypatch, srv.engine.engine)
    results: dict[str, httpx.Response] = {}
    long = threading.Thread(target=lambda: results.__setitem__("long", complete(srv, [7, 8, 9], max_tokens=40)))
    long.start()
    results["poisoned"] = complete(srv, [POISON, 4, 5])
    long.join(120)
    assert results["poisoned"].status_code == 500
    done = results["long"].json()["choices"][0]
    assert results["long"].status_code == 200 and done["finish_reason"] == "length"
    assert results["long"].json()["usage"]["completion_tokens"] == 40
    assert httpx.get(f"{srv.url}/health").status_code == 200


def test_a_stream_that_fails_midway_ends_with_an_error_event_and_done(srv, monkeypatch):
    fail_output_of_poison(monkeypatch, srv.engine.engine, after=2)
    body = {"model": "tiny", "prompt": [POISON, 3], "max_tokens": 20, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with httpx.stream("POST", f"{srv.url}/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "engine_error"
    assert len(events) == 4  # two text chunks, the error, [DONE]
    assert httpx.get(f"{srv.url}/health").status_code == 200


def test_a_broken_executor_is_declared_dead_after_steps_fail_in_a_row(latent_dir, start_server, monkeypatch):
    """Not a request's fault when every step fails: the loop stops and /health says 503."""
    with start_server(config(latent_dir)) as srv:
        def broken(step):
            raise RuntimeError("device lost")

        monkeypatch.setattr(srv.engine.engine.executor, "execute", broken)
        statuses = [complete(srv, [1, 2]).status_code for _ in range(MAX_FAILED_STEPS)]
        assert statuses == [500] * (MAX_FAILED_STEPS - 1) + [503]
        assert httpx.get(f"{srv.url}/health").status_code == 503
