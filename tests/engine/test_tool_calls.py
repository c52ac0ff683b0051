"""Tool calls in Nemotron 3's XML format: parsed, streamed, rendered and forced by grammar.

The parser is held to the chat template (what the template renders for an assistant's calls
parses back to the same calls) and to the tools' JSON schemas (argument types).
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from nemodeploy.engine import tool_calls
from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.core import LLMEngine
from nemodeploy.engine.protocol import GenerationRequest, SamplingParams
from nemodeploy.engine.tiny import tiny_model_dir
from nemodeploy.engine.tokenizer import Tokenizer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 24}, "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "units": {"type": "string", "enum": ["c", "f"]}, "detail": {"type": "object"}},
        "required": ["city", "days"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"]}}}
TOOLS = [WEATHER, CLOCK]

ANSWER = ("Let me look.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Francisco\n</parameter>\n"
          "<parameter=days>\n3\n</parameter>\n<parameter=detail>\n{\"hourly\": true}\n</parameter>\n</function>\n"
          "</tool_call>\n<tool_call>\n<function=get_time>\n<parameter=zone>\nPST\n</parameter>\n</function>\n</tool_call>")


def test_calls_are_parsed_with_arguments_typed_by_the_tool_schema():
    content, calls = tool_calls.parse(ANSWER, TOOLS)
    assert content == "Let me look."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "San Francisco", "days": 3, "detail": {"hourly": True}}),
        ("get_time", {"zone": "PST"}),
    ]
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize("text", [
    "plain answer, no call",
    "<tool_call>\n<function=launch_rockets>\n</function>\n</tool_call>",  # not an offered tool
    "<tool_call>\n<function=get_time>\n<parameter=zone>\nUTC\n</parameter>\n",  # never closed
    "<tool_call>\n<function=get_time>\n</function>\n</tool_call> and then some",  # text after the call
])
def test_anything_that_is_not_a_clean_call_to_an_offered_tool_stays_content(text):
    assert tool_calls.parse(text, TOOLS) == (text, [])


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_streaming_gives_what_parsing_the_whole_answer_gives(step):
    stream = tool_calls.ToolCallStream(TOOLS)
    content, calls = "", []
    for i in range(0, len(ANSWER), step):
        delta, done = stream.feed(ANSWER[i : i + step])
        content, calls = content + delta, calls + done
    content += stream.finish()
    expected_content, expected = tool_calls.parse(ANSWER, TOOLS)
    assert content == expected_content
    assert [(c.name, c.arguments) for c in calls] == [(c.name, c.arguments) for c in expected]


def test_streaming_releases_a_call_that_never_completes_as_content():
    stream = tool_calls.ToolCallStream(TOOLS)
    text = "ok <tool_call>\n<function=get_time>\n<parameter=zone>"
    shown = "".join(stream.feed(c)[0] for c in text)
    assert shown == "ok" and shown + stream.finish() == "ok" + text[2:]


def test_what_the_chat_template_renders_for_past_calls_parses_back_to_them():
    tokenizer = Tokenizer(tiny_model_dir())
    history = [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                      "arguments": json.dumps({"city": "Oslo", "days": 2})}}]}]
    text = tokenizer.hf.apply_chat_template(tool_calls.template_messages(history), tools=TOOLS, tokenize=False)
    assert "<tools>\n<function>\n<name>get_weather</name>" in text
    turn = text[text.rindex("<|im_start|>assistant\n") :].removeprefix("<|im_start|>assistant\n<think></think>")
    _, calls = tool_calls.parse(turn.removesuffix("<|im_end|>\n"), TOOLS)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Oslo", "days": 2})]


def test_arguments_that_are_not_json_are_refused_when_the_history_is_read():
    with pytest.raises(ValueError, match="not JSON"):
        tool_calls.template_messages([{"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}])


@pytest.mark.parametrize("name", ["get_weather", None])
def test_the_grammar_forces_a_call_whose_arguments_satisfy_the_schema(name):
    engine = LLMEngine(EngineConfig(model=str(tiny_model_dir()), dtype="float32", num_kv_blocks=64, max_model_len=2048,
                                    max_num_batched_tokens=1024))
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    prompt, _ = engine.tokenizer.apply_chat_template(messages, enable_thinking=False, tools=TOOLS)
    params = SamplingParams(max_tokens=200, temperature=0.7, seed=11, guided={"lark": tool_calls.grammar(TOOLS, name)})
    engine.add_request(GenerationRequest("t", prompt, params))
    text, reason = "", None
    while engine.has_unfinished():
        for out in engine.step():
            text, reason = text + out.text, out.finish_reason or reason
    content, calls = tool_calls.parse(text, TOOLS)
    assert reason == "stop" and content == "" and calls, text
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for call in calls:
        assert name is None or call.name == name
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])


def test_a_named_tool_that_is_not_offered_is_refused():
    with pytest.raises(ValueError, match="not among the tools"):
        tool_calls.grammar(TOOLS, "launch_rockets")
