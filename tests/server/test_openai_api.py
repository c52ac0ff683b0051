"""The server as the real `openai` client sees it: chat with and without thinking, streaming,
completions, seeds, stop strings, errors (400 / 401 / 404 / 429), and cancellation."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from nemodeploy.engine.config import EngineConfig

KEY = "test-key"
HELLO = [{"role": "user", "content": "Hello! How are you today?"}]


@pytest.fixture(scope="module")
def srv(latent_dir, start_server):
    config = EngineConfig(model=str(latent_dir), dtype="float32", block_size=8, num_kv_blocks=128,
                          num_mamba_slots=2, max_num_seqs=2, max_num_batched_tokens=64, max_model_len=512,
                          max_queue=1, served_model_name="tiny")
    with start_server(config, api_key=KEY) as running:
        yield running


@pytest.fixture(scope="module")
def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{srv.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_models_lists_the_served_name(client):
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_chat_with_thinking_splits_reasoning_content(client):
    r = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=24, temperature=0,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": True},
                                                   "thinking_budget": 6})
    message = r.choices[0].message
    assert message.reasoning_content  # six reasoning tokens, then </think> forced by the budget
    assert r.usage.completion_tokens == 24
    assert r.usage.prompt_tokens > 0


def test_chat_without_thinking_has_no_reasoning_content(client):
    r = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16, temperature=0,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert getattr(r.choices[0].message, "reasoning_content", None) is None
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")


def test_streamed_chat_equals_the_whole_answer(client):
    kwargs = dict(model="tiny", messages=HELLO, max_tokens=20, temperature=0,
                  extra_body={"chat_template_kwargs": {"enable_thinking": True}, "thinking_budget": 5})
    whole = client.chat.completions.create(**kwargs).choices[0].message
    reasoning, content, usage, reasons = "", "", None, []
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
            reasons.append(choice.finish_reason)
    assert (reasoning, content) == (whole.reasoning_content, whole.content)
    assert reasons[-1] in ("stop", "length") and usage.completion_tokens <= 20


def test_completions_stream_and_usage(client):
    whole = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=12, temperature=0)
    parts = list(client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=12,
                                           temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in parts if c.choices) == whole.choices[0].text
    assert parts[-1].usage.total_tokens == whole.usage.total_tokens


def test_same_seed_same_text_and_other_seed_other_text(client):
    def sampled(seed):
        return client.completions.create(model="tiny", prompt="Hello", max_tokens=16, temperature=1.0,
                                         top_p=0.95, seed=seed, extra_body={"ignore_eos": True}).choices[0].text

    assert sampled(7) == sampled(7)
    assert sampled(7) != sampled(8)


def test_stop_string_is_cut_out_streamed_or_not(client):
    kwargs = dict(model="tiny", prompt="Numbers: 0 1 2", max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.index(stop)]
    r = client.completions.create(stop=[stop], **kwargs)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (expected, "stop")
    streamed = [c.choices[0].text for c in client.completions.create(stop=[stop], stream=True, **kwargs)]
    assert "".join(streamed) == expected


def test_missing_key_is_401(srv):
    bare = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bare.models.list()
    assert err.value.status_code == 401 and err.value.body["type"] == "authentication_error"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4", messages=HELLO)
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny"}, "messages"),
    ({"model": "tiny", "messages": "hi"}, "messages"),
    ({"model": "tiny", "messages": HELLO, "max_tokens": "many"}, "max_tokens"),
    ({"model": "tiny", "messages": HELLO, "temperature": -1}, "temperature"),
    ({"model": "tiny", "messages": HELLO, "max_tokens": 100_000}, "max_tokens"),
])
def test_bad_requests_are_400_with_openai_error_bodies(srv, body, param):
    r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_unsupported_features_are_refused_not_ignored(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt="Hello", max_tokens=4, echo=True)
    assert err.value.body["param"] == "echo" and err.value.body["code"] == "unsupported"


def test_bad_json_is_400(srv):
    r = httpx.post(f"{srv.url}/v1/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_full_queue_is_429_and_disconnects_free_every_slot_and_block(srv, client):
    """Two running (max_num_seqs 2) and one waiting (max_queue 1) fill the server; the next gets 429.
    Closing the streams mid-answer aborts them: every block and slot is free again."""
    streams, first_chunk = [], []

    def hold():
        s = client.completions.create(model="tiny", prompt="Hello", max_tokens=400, temperature=0, stream=True,
                                      extra_body={"ignore_eos": True})
        streams.append(s)
        first_chunk.append(next(iter(s)))

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for t in holders:
        t.start()
    for t in holders:
        t.join(60)
    assert len(first_chunk) == 2
    waiting = threading.Thread(target=hold)
    waiting.start()
    deadline = time.monotonic() + 30
    while srv.metrics()["vllm:num_requests_waiting"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(openai.RateLimitError) as err:
        client.completions.create(model="tiny", prompt="Hello", max_tokens=4)
    assert err.value.body["type"] == "rate_limit_error"
    aborted_before = srv.metrics()['vllm:request_success_total{finished_reason="abort"}']
    for s in streams[:2]:
        s.close()
    waiting.join(60)
    streams[2].close()
    m = srv.wait_idle()
    assert m["nemodeploy:kv_blocks_free"] == m["nemodeploy:kv_blocks_total"]
    assert m["nemodeploy:mamba_slots_free"] == m["nemodeploy:mamba_slots_total"]
    assert m['vllm:request_success_total{finished_reason="abort"}'] == aborted_before + 3


def test_client_hanging_up_on_a_non_streamed_request_aborts_it(srv):
    aborted_before = srv.metrics()['vllm:request_success_total{finished_reason="abort"}']
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 400, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{srv.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=1.0)
    m = srv.wait_idle()
    assert m['vllm:request_success_total{finished_reason="abort"}'] == aborted_before + 1
    assert m["nemodeploy:mamba_slots_free"] == m["nemodeploy:mamba_slots_total"]


def test_only_health_is_open_without_the_key(srv):
    assert httpx.get(f"{srv.url}/health").status_code == 200
    for path in ("/metrics", "/openapi.json", "/v1/models"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = httpx.get(f"{srv.url}{path}", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, headers)
    key = {"Authorization": f"Bearer {KEY}"}
    assert "vllm:kv_cache_usage_perc" in httpx.get(f"{srv.url}/metrics", headers=key).text
    assert "/v1/chat/completions" in httpx.get(f"{srv.url}/openapi.json", headers=key).json()["paths"]


def test_the_topology_reasoning_setting_is_the_default_for_requests_that_do_not_say(latent_dir, start_server):
    """`serving.reasoning: off` reaches the server as default_thinking=False; a request can still ask for it."""
    config = EngineConfig(model=str(latent_dir), dtype="float32", block_size=8, num_kv_blocks=64,
                          num_mamba_slots=1, max_num_seqs=1, max_num_batched_tokens=64, max_model_len=256,
                          served_model_name="tiny", default_thinking=False)
    with start_server(config) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0, timeout=120)
        plain = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, temperature=0)
        assert getattr(plain.choices[0].message, "reasoning_content", None) is None
        asked = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, temperature=0,
                                               extra_body={"chat_template_kwargs": {"enable_thinking": True}})
        assert asked.choices[0].message.reasoning_content
