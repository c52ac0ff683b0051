"""No request hurts the engine: the killers found by probing are each refused at the API edge with a
4xx (never a 5xx), /health stays 200 after every one, and the next ordinary request is served."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from nemodeploy.engine.config import EngineConfig

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
VOCAB = 512  # the tiny checkpoint's embedding rows


@pytest.fixture(scope="module")
def srv(latent_dir, start_server):
    config = EngineConfig(model=str(latent_dir), dtype="float32", block_size=8, num_kv_blocks=64,
                          num_mamba_slots=2, max_num_seqs=2, max_num_batched_tokens=64, max_model_len=128,
                          served_model_name="tiny")
    with start_server(config, api_key=KEY) as running:
        yield running


def post(srv, path: str, body: dict | bytes | str, timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{srv.url}{path}", content=content, timeout=timeout,
                      headers={**AUTH, "Content-Type": "application/json"})


def still_serving(srv) -> None:
    assert httpx.get(f"{srv.url}/health").status_code == 200
    r = post(srv, "/v1/completions", {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 2, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 2


def completion(**fields) -> dict:
    return {"model": "tiny", "prompt": "Hello", "max_tokens": 2, **fields}


def chat(messages, **fields) -> dict:
    return {"model": "tiny", "messages": messages, "max_tokens": 2, **fields}


USER = {"role": "user", "content": "Hi"}

KILLERS = {
    "token id at the vocabulary size": ("/v1/completions", completion(prompt=[1, VOCAB]), "outside the vocabulary"),
    "token id far outside": ("/v1/completions", completion(prompt=[2**40]), "outside the vocabulary"),
    "negative token id": ("/v1/completions", completion(prompt=[5, -1]), "outside the vocabulary"),
    "stop token id outside": ("/v1/completions", completion(stop_token_ids=[10**6]), "outside the vocabulary"),
    "seed 2**64": ("/v1/completions", completion(seed=2**64), "seed"),
    "seed below int64": ("/v1/completions", completion(seed=-(2**63) - 1), "seed"),
    "empty prompt": ("/v1/completions", completion(prompt=""), "empty"),
    "empty token list": ("/v1/completions", completion(prompt=[]), "prompt"),
    "prompt of mixed types": ("/v1/completions", completion(prompt=[1, "a", None]), "prompt"),
    "top_k past int32": ("/v1/completions", completion(top_k=2**70), "top_k"),
    "part with a number as text": ("/v1/chat/completions",
                                   chat([{"role": "user", "content": [{"type": "text", "text": 123}]}]), "text"),
    "part with null text": ("/v1/chat/completions",
                            chat([{"role": "user", "content": [{"type": "text", "text": None}]}]), "text"),
    "image part": ("/v1/chat/completions",
                   chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "type"),
    "content as a mapping": ("/v1/chat/completions", chat([{"role": "user", "content": {"a": 1}}]), "content"),
    "unknown role": ("/v1/chat/completions", chat([{"role": "root", "content": "hi"}]), "role"),
    "no messages": ("/v1/chat/completions", chat([]), "messages"),
    "client chat template": ("/v1/chat/completions",
                             chat([USER], chat_template_kwargs={
                                 "chat_template": "{% for i in range(99999) %}{% for j in range(99999) %}x"
                                                  "{% endfor %}{% endfor %}"}),
                             "'chat_template' is not an option"),
    "template keyword clash": ("/v1/chat/completions", chat([USER], chat_template_kwargs={"tokenize": True}),
                               "not an option"),
    "template option as a structure": ("/v1/chat/completions",
                                       chat([USER], chat_template_kwargs={"enable_thinking": {"a": [1]}}),
                                       "chat_template_kwargs"),
    "enable_thinking not a boolean": ("/v1/chat/completions", chat([USER], enable_thinking="yes"), "enable_thinking"),
    "too many choices": ("/v1/completions", completion(n=10**6), "n"),
    "tool call history that is not a list": ("/v1/chat/completions",
                                             chat([USER, {"role": "assistant", "tool_calls": {"a": 1}}]), "tool_calls"),
    "tool arguments that are not JSON": ("/v1/chat/completions", chat([USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}]}]), "not JSON"),
}


@pytest.mark.parametrize("path,body,fragment", KILLERS.values(), ids=KILLERS.keys())
def test_a_killer_request_is_a_400_and_the_engine_serves_on(srv, path, body, fragment):
    r = post(srv, path, body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"], r.text
    still_serving(srv)


RAW = {
    "NaN temperature": ('{"model": "tiny", "prompt": "Hi", "temperature": NaN}', 400),
    "infinite top_p": ('{"model": "tiny", "prompt": "Hi", "top_p": -Infinity}', 400),
    "not JSON": ("{'model': 'tiny'", 400),
    "not UTF-8": (b'{"model": "tiny", "prompt": "\xff\xfe"}', 400),
    "a JSON list": ("[1, 2]", 400),
    "deep nesting": ('{"model": "tiny", "prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", 400),
    "over the body limit": (b'{"model": "tiny", "prompt": "' + b"a" * (33 * 2**20) + b'"}', 413),
}


@pytest.mark.parametrize("body,status", RAW.values(), ids=RAW.keys())
def test_a_malformed_body_is_refused_and_the_engine_serves_on(srv, body, status):
    assert post(srv, "/v1/completions", body).status_code == status
    still_serving(srv)


def test_edge_values_that_are_valid_are_served(srv):
    r = post(srv, "/v1/completions", completion(prompt=[0, VOCAB - 1], seed=2**64 - 1, temperature=1.0))
    assert r.status_code == 200, r.text
    r = post(srv, "/v1/chat/completions", chat([{"role": "system", "content": None}, USER,
                                                {"role": "assistant", "content": None},
                                                {"role": "user", "content": [{"type": "text", "text": "again"}]}]))
    assert r.status_code == 200, r.text
    still_serving(srv)


def test_a_huge_prompt_is_tokenised_off_the_event_loop(srv):
    """While a ~1 MB prompt is tokenised (seconds), /health keeps answering; the prompt is then too long."""
    answers: dict[str, float] = {}

    def big() -> None:
        r = post(srv, "/v1/completions", completion(prompt="hello world " * 90_000), timeout=120)
        answers["big"] = time.monotonic()
        answers["status"] = r.status_code

    sender = threading.Thread(target=big)
    sender.start()
    time.sleep(0.3)  # the body is in; tokenising has begun
    assert httpx.get(f"{srv.url}/health", timeout=30).status_code == 200
    answers["health"] = time.monotonic()
    sender.join(120)
    assert answers["status"] == 400  # 810k tokens do not fit 128
    assert answers["health"] < answers["big"]
