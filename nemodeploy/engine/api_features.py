"""The OpenAI request fields agents use, turned into engine terms and back.

Requests: tools and `tool_choice` (a grammar when a call is forced), `response_format`
(a JSON-schema grammar), `reasoning_effort` (thinking off, on with a budget, or on).
Responses: log-probabilities in the chat and the legacy completions shapes, and tool calls
parsed from the answer, whole or streamed (`ChoiceText`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nemodeploy.engine import tool_calls
from nemodeploy.engine.protocol import TokenLogprob

# reasoning_effort "low": thinking on, closed after this many tokens ("medium" / "high": no budget)
LOW_EFFORT_THINKING_BUDGET = 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionSpec(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def object_schema(cls, parameters: dict[str, Any] | None) -> dict[str, Any] | None:
        """An object's JSON schema: `properties` a mapping of schemas, `required` a list of their names."""
        if parameters is None:
            return None
        properties = parameters.get("properties", {})
        if not isinstance(properties, dict) or not all(isinstance(v, dict) for v in properties.values()):
            raise ValueError("parameters.properties must map each argument name to its JSON schema")
        required = parameters.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise ValueError("parameters.required must be a list of argument names")
        if not all(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) for name in properties):
            raise ValueError("argument names are 1-64 letters, digits, '_', '.' or '-'")
        return parameters


class Tool(_Model):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Model):
    name: str


class ToolChoiceFunction(_Model):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction


class JsonSchemaFormat(_Model):
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Model):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


def guided(specs: list[dict[str, Any]] | None, tool_choice: ToolChoice | None, parallel_tool_calls: bool,
           response_format: ResponseFormat | None) -> dict | None:
    """The grammar a request asks for, if any (`specs`: the tools as dicts); ValueError when it asks
    for two or names no tool."""
    specs = specs or []
    forced = None
    if isinstance(tool_choice, ToolChoiceFunction):
        forced = {"lark": tool_calls.grammar(specs, tool_choice.function.name)}
    elif tool_choice == "required":
        if not specs:
            raise ValueError("tool_choice 'required' needs tools")
        forced = {"lark": tool_calls.grammar(specs, many=parallel_tool_calls)}
    answer = None
    if response_format is not None and response_format.type == "json_object":
        answer = {"json_schema": {"type": "object"}}
    elif response_format is not None and response_format.type == "json_schema":
        if response_format.json_schema is None:
            raise ValueError("response_format json_schema needs its json_schema")
        answer = {"json_schema": response_format.json_schema.schema_}
    if forced and answer:
        raise ValueError("a forced tool call and a response_format cannot both shape the answer")
    return forced or answer


def thinking(reasoning_effort: str | None, enable_thinking: bool | None) -> tuple[bool | None, int | None]:
    """(thinking on / off / the default, its budget) from reasoning_effort and enable_thinking."""
    if reasoning_effort is None:
        return enable_thinking, None
    wanted = reasoning_effort not in ("none", "minimal")
    if enable_thinking is not None and enable_thinking != wanted:
        raise ValueError(f"reasoning_effort {reasoning_effort!r} contradicts enable_thinking {enable_thinking}")
    return wanted, LOW_EFFORT_THINKING_BUDGET if reasoning_effort == "low" else None


def _token(tokenizer, token: int) -> dict[str, Any]:
    text = tokenizer.hf.decode([token], skip_special_tokens=False)
    return {"token": text, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer, logprobs: list[TokenLogprob] | None) -> dict | None:
    """OpenAI's chat shape: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    if logprobs is None:
        return None
    return {"content": [
        {**_token(tokenizer, lp.token), "logprob": lp.logprob,
         "top_logprobs": [{**_token(tokenizer, t), "logprob": v} for t, v in lp.top]}
        for lp in logprobs
    ]}


def completion_logprobs(tokenizer, logprobs: list[TokenLogprob] | None, offset: int = 0) -> dict | None:
    """The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset."""
    if logprobs is None:
        return None
    tokens = [_token(tokenizer, lp.token)["token"] for lp in logprobs]
    offsets = [offset + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{_token(tokenizer, t)["token"]: v for t, v in lp.top} for lp in logprobs],
            "text_offset": offsets}


def call_json(call: tool_calls.ToolCall, index: int | None = None) -> dict[str, Any]:
    out = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return out if index is None else {"index": index, **out}


class ChoiceText:
    """One choice's answer text, with tool calls split off when the request offered tools."""

    def __init__(self, tools: list[dict[str, Any]] | None):
        self.tools = tools
        self.stream = tool_calls.ToolCallStream(tools) if tools else None
        self.num_calls = 0

    def delta(self, text: str, finished: bool) -> tuple[str, list[dict[str, Any]]]:
        """A streamed content delta and the tool-call deltas completed with it."""
        if self.stream is None:
            return text, []
        content, calls = self.stream.feed(text)
        if finished:
            content += self.stream.finish()
        deltas = [call_json(c, self.num_calls + i) for i, c in enumerate(calls)]
        self.num_calls += len(calls)
        return content, deltas

    def whole(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """The finished answer's content (None when it is only calls) and its calls."""
        if self.tools is None:
            return text, []
        content, calls = tool_calls.parse(text, self.tools)
        return (content or None) if calls else content, [call_json(c) for c in calls]


def finish_reason(reason: str | None, made_calls: bool) -> str | None:
    return "tool_calls" if made_calls and reason == "stop" else reason
