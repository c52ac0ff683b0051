"""Tool calls in Nemotron 3's format (vLLM's qwen3_coder parser reads the same XML).

The model answers a call as

    <tool_call>
    <function=NAME>
    <parameter=ARG>
    VALUE
    </parameter>
    </function>
    </tool_call>

after optional plain text. `parse` turns a finished answer into (content, calls); `ToolCallStream`
does it on streamed text deltas; `grammar` is the Lark grammar that forces a call (tool_choice
`required` or a named function), with each argument constrained by its JSON schema type.
Anything that does not parse as calls to the offered tools stays content: malformed model
output is never an error.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL = re.compile(r"<tool_call>\s*<function=([^>\n]+)>\n?(.*?)</function>\s*</tool_call>", re.S)
_PARAM = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object, as OpenAI's API carries it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def _schemas(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Function name -> its parameters' properties."""
    out = {}
    for tool in tools:
        fn = tool.get("function", tool)
        params = fn.get("parameters") or {}
        out[fn["name"]] = params.get("properties") or {} if isinstance(params, dict) else {}
    return out


def _value(text: str, schema: Any) -> Any:
    """The parameter's text as its schema's JSON type; as the text itself when it does not convert."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    kinds = kind if isinstance(kind, list) else [kind]
    if "string" in kinds or kind is None and text[:1] not in "{[":
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if "integer" in kinds and isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


def _call(name: str, body: str, schemas: dict[str, dict[str, Any]]) -> ToolCall | None:
    name = name.strip()
    if name not in schemas:
        return None
    args = {key.strip(): _value(value, schemas[name].get(key.strip())) for key, value in _PARAM.findall(body)}
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


def parse(text: str, tools: list[dict[str, Any]]) -> tuple[str, list[ToolCall]]:
    """(content before the first call, the calls); (text, []) unless every call parses."""
    start = text.find(CALL_OPEN)
    if start < 0:
        return text, []
    schemas, calls, at = _schemas(tools), [], start
    for match in _CALL.finditer(text, start):
        if text[at : match.start()].strip():
            return text, []
        call = _call(match.group(1), match.group(2), schemas)
        if call is None:
            return text, []
        calls.append(call)
        at = match.end()
    if not calls or text[at:].strip():
        return text, []
    return text[:start].rstrip(), calls


class ToolCallStream:
    """Streamed content deltas in, (content delta, completed calls) out.

    Text that may be the start of `<tool_call>` (and white space before it) is held back; once a call opens, text is
    buffered until its `</tool_call>`, then the call is emitted whole. At the end, whatever
    did not parse as a call is released as content.
    """

    def __init__(self, tools: list[dict[str, Any]]):
        self.schemas = _schemas(tools)
        self.buffer = ""
        self.calls: list[ToolCall] = []

    def feed(self, delta: str) -> tuple[str, list[ToolCall]]:
        self.buffer += delta
        if not self.calls:
            start = self.buffer.find(CALL_OPEN)
            if start < 0:  # hold back trailing white space and what may begin <tool_call>
                shown = self.buffer[: len(self.buffer) - _partial_suffix(self.buffer, CALL_OPEN)].rstrip()
                content, self.buffer = shown, self.buffer[len(shown) :]
                return content, []
            content = self.buffer[:start].rstrip()
            self.buffer = self.buffer[len(content) :]
        else:
            content = ""
        done = []
        while (match := _CALL.match(self.buffer.lstrip())) is not None:
            call = _call(match.group(1), match.group(2), self.schemas)
            if call is None:
                break
            done.append(call)
            self.buffer = self.buffer.lstrip()[match.end() :]
        self.calls += done
        return content, done

    def finish(self) -> str:
        """Content held back: a partial `<tool_call>`, or text that never became a valid call."""
        rest, self.buffer = self.buffer, ""
        return "" if self.calls and not rest.strip() else rest


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that begins `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def grammar(tools: list[dict[str, Any]], name: str | None = None, many: bool = True) -> str:
    """llguidance Lark: one call to `name`, or to any of `tools` (one or more with `many`).

    Parameters come in the schema's order, the required ones always; a string value is one of
    its enum or text without '<' (so it cannot run into the closing tag) up to its maxLength,
    other types follow their schema.
    `<tool_call>` and `</tool_call>` are single tokens in Nemotron 3's vocabulary (llguidance
    counts them as special tokens), so the grammar names them as tokens, not text.
    """
    schemas = {n: s for n, s in _required(tools).items() if name is None or n == name}
    if not schemas:
        raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
    rules, calls = [], []
    for i, (fn, (properties, required)) in enumerate(schemas.items()):
        params = []
        for j, (arg, schema) in enumerate(properties.items()):
            value = _string_rule(schema) if _is_string(schema) else f"%json {json.dumps(schema)}"
            opening, closing = _lit(f"<parameter={arg}>\n"), _lit("\n</parameter>\n")
            rules.append(f"p{i}_{j}: {opening} {value} {closing}")
            params.append(f"p{i}_{j}" if arg in required else f"p{i}_{j}?")
        head, tail = _lit(f"\n<function={fn}>\n"), _lit("</function>\n")
        rules.append(f"c{i}: {CALL_OPEN} {head} {' '.join(params)} {tail} {CALL_CLOSE}")
        calls.append(f"c{i}")
    any_call = f"({' | '.join(calls)})"
    newline = _lit("\n")
    start = f"start: {any_call}" + (f" ({newline} {any_call})*" if many and not name else "")
    return "\n".join([start, *rules])


def _lit(text: str) -> str:
    """A Lark string literal (JSON string syntax)."""
    return json.dumps(text)


def _required(tools: list[dict[str, Any]]) -> dict[str, tuple[dict[str, Any], set[str]]]:
    out = {}
    for tool in tools:
        fn = tool.get("function", tool)
        params = fn.get("parameters") or {}
        out[fn["name"]] = (params.get("properties") or {}, set(params.get("required") or []))
    return out


def _is_string(schema: Any) -> bool:
    return not isinstance(schema, dict) or schema.get("type") in ("string", None)


def _string_rule(schema: Any) -> str:
    """A string argument as it stands between the tags: one of its enum, or text without '<' up to maxLength."""
    schema = schema if isinstance(schema, dict) else {}
    if schema.get("enum"):
        return "(" + " | ".join(_lit(str(v)) for v in schema["enum"]) + ")"
    limit = schema.get("maxLength")
    return f"/[^<]{{0,{int(limit)}}}/" if isinstance(limit, int) else "/[^<]*/"


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as the chat template reads them: tool-call arguments decoded from their JSON string."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                                      and isinstance(c["function"].get("name"), str) for c in calls):
                raise ValueError("tool_calls must be a list of {\"type\": \"function\", \"function\": {\"name\", "
                                 "\"arguments\"}} objects")
            decoded = []
            for call in calls:
                fn = dict(call["function"])
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"] or "{}")
                    except ValueError as err:
                        raise ValueError(f"tool call {fn.get('name')!r}: arguments are not JSON ({err})") from None
                decoded.append({**call, "function": fn})
            message = {**message, "tool_calls": decoded}
        out.append(message)
    return out
