"""The API agents use, through the real openai client: a tool loop (call, result, answer), forced
and named tool calls streamed or not, JSON-schema output, log-probabilities, n choices, penalties,
and reasoning_effort. The tiny model's text means nothing, so calls are forced by the grammar."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from nemodeploy.engine.config import EngineConfig

KEY = "agent-key"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "days": {"type": "integer", "minimum": 1, "maximum": 5}},
                   "required": ["city", "days"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}


@pytest.fixture(scope="module")
def client(latent_dir, start_server) -> openai.OpenAI:
    config = EngineConfig(model=str(latent_dir), dtype="float32", block_size=8, num_kv_blocks=256, num_mamba_slots=4,
                          max_num_seqs=4, max_num_batched_tokens=256, max_model_len=1024, served_model_name="tiny")
    with start_server(config, api_key=KEY) as running:
        yield openai.OpenAI(base_url=f"{running.url}/v1", api_key=KEY, max_retries=0, timeout=300)


def _check_call(call, name="get_weather") -> dict:
    assert call.type == "function" and call.function.name == name and call.id
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, WEATHER["function"]["parameters"])
    return args


def test_a_tool_loop_call_then_result_then_answer(client):
    first = client.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER], tool_choice="required",
                                           max_tokens=120, temperature=0.7, seed=1, extra_body=NO_THINKING)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    _check_call(call)
    history = ASK + [choice.message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "clear"})}]
    answer = client.chat.completions.create(model="tiny", messages=history, tools=[WEATHER], tool_choice="none",
                                            max_tokens=8, temperature=0, extra_body=NO_THINKING)
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].message.content
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result are in the prompt


def _streamed(stream) -> tuple[str, list, str | None]:
    content, calls, reason = "", [], None
    for chunk in stream:
        for c in chunk.choices:
            content += c.delta.content or ""
            calls += c.delta.tool_calls or []
            reason = c.finish_reason or reason
    return content, calls, reason


def test_a_streamed_tool_loop_with_a_named_call(client):
    _, calls, reason = _streamed(client.chat.completions.create(
        model="tiny", messages=ASK, tools=[WEATHER], stream=True, max_tokens=120, temperature=0.7, seed=2,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, extra_body=NO_THINKING))
    assert reason == "tool_calls" and len(calls) == 1
    args = _check_call(calls[0])
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": calls[0].id, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps(args)}}]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": "clear sky"}]
    content, calls, reason = _streamed(client.chat.completions.create(
        model="tiny", messages=history, tools=[WEATHER], stream=True, max_tokens=8, temperature=0,
        extra_body=NO_THINKING))
    assert content and reason in ("stop", "length")  # tool_choice auto: the random model answers in text


def test_json_schema_output_validates(client):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 16},
                                               "score": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["answer", "score"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=80, temperature=0.7, seed=3, extra_body=NO_THINKING,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_logprobs_in_chat_and_completions(client):
    chat = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=4, temperature=0, logprobs=True,
                                          top_logprobs=3, extra_body=NO_THINKING)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == t.logprob and t.logprob <= 0 for t in content)
    done = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0, logprobs=2,
                                     extra_body={"ignore_eos": True})
    lp = done.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == done.choices[0].text and lp.text_offset[0] == 0


def test_n_choices_penalties_and_min_tokens(client):
    reply = client.completions.create(model="tiny", prompt="Hello", max_tokens=6, n=3, temperature=1.0, seed=7,
                                      presence_penalty=0.5, frequency_penalty=0.5,
                                      extra_body={"min_tokens": 6, "repetition_penalty": 1.2})
    assert sorted(c.index for c in reply.choices) == [0, 1, 2]
    assert reply.usage.completion_tokens == 18 and len({c.text for c in reply.choices}) > 1
    again = client.completions.create(model="tiny", prompt="Hello", max_tokens=6, n=3, temperature=1.0, seed=7,
                                      presence_penalty=0.5, frequency_penalty=0.5,
                                      extra_body={"min_tokens": 6, "repetition_penalty": 1.2})
    assert [c.text for c in again.choices] == [c.text for c in reply.choices]


def test_reasoning_effort_turns_thinking_off_or_bounds_it(client):
    off = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=6, reasoning_effort="minimal")
    assert not getattr(off.choices[0].message, "reasoning_content", None)
    low = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=6, reasoning_effort="low")
    assert getattr(low.choices[0].message, "reasoning_content", None) is not None
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=ASK, max_tokens=6, reasoning_effort="high",
                                       extra_body=NO_THINKING)


@pytest.mark.parametrize("history", [
    [{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                            "function": {"name": "get_weather", "arguments": "{"}}]}],
    [{"role": "assistant", "content": None, "tool_calls": "not a list"}],
    [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": " there"}]}],
])
def test_odd_histories_are_served_or_refused_never_5xx(client, history):
    try:
        client.chat.completions.create(model="tiny", messages=ASK + history, max_tokens=2, extra_body=NO_THINKING)
    except openai.BadRequestError:
        pass


@pytest.mark.parametrize("body", [
    {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
    {"tool_choice": "required"},
    {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": "x"}}}]},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
])
def test_impossible_tool_and_format_requests_are_400(client, body):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, extra_body=body)
