"""OpenAI-compatible HTTP server over AsyncEngine: /v1/models, /v1/completions,
/v1/chat/completions (SSE streaming or not), /health and /metrics.

Errors use OpenAI's body `{"error": {"message", "type", "param", "code"}}`: 400 for a
request that cannot be served as written, 401 without the API key, 404 for an
unknown model, 413 for a body over MAX_BODY_BYTES, 429 when the waiting queue is full,
500 when the engine failed that one request, 503 when the engine loop died.

No request can hurt the engine: every field is checked here, at the edge (token ids
within the vocabulary, seeds a generator takes, message shapes, chat template options,
never a client's template), tokenising and templating run off the event loop, and the
API key (compared in constant time) guards every path but /health.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import json
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from nemodeploy.engine import api_features as api
from nemodeploy.engine import tool_calls
from nemodeploy.engine.async_engine import AsyncEngine, EngineDead
from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.metrics import make_registry, render
from nemodeploy.engine.protocol import GenerationRequest, QueueFull, RequestOutput, RequestTooLong, SamplingParams
from nemodeploy.engine.tokenizer import Tokenizer

# OpenAI fields this engine does not implement: asking for them is an error, not a silent no-op
UNSUPPORTED = ("echo", "suffix", "best_of", "logit_bias", "functions", "function_call")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 429: "rate_limit_error", 499: "client_closed_request",
               500: "server_error", 503: "service_unavailable"}

MAX_BODY_BYTES = 32 * 1024 * 1024  # a 1M-token prompt as JSON token ids is ~8 MB
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
OPEN_PATHS = ("/health",)  # everything else needs the API key when one is set
_UNION_TAG = re.compile(r"^(str|int|float|bool|none|function-.*|.*\[.*\]|[A-Z]\w*)$")  # pydantic's, in error locs


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by both endpoints; unknown fields are ignored as OpenAI does."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, le=2**31 - 1)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stop_token_ids: list[int] = Field(default_factory=list, max_length=256)
    ignore_eos: bool = False
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    thinking_budget: int | None = Field(default=None, ge=0)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    repetition_penalty: float = Field(default=1.0, gt=0, le=2)
    min_tokens: int = Field(default=0, ge=0, le=2**31 - 1)

    def sampling(self, max_tokens: int, logprobs: int | None = None, **extra) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if self.min_tokens > max_tokens:
            raise APIError(400, f"min_tokens ({self.min_tokens}) exceeds max_tokens ({max_tokens})", param="min_tokens")
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, seed=self.seed, stop=stop, stop_token_ids=self.stop_token_ids,
                              ignore_eos=self.ignore_eos, thinking_budget=self.thinking_budget,
                              presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                              repetition_penalty=self.repetition_penalty, min_tokens=self.min_tokens,
                              logprobs=logprobs, **extra)

    def choices(self, rid: str, prompt: list[int], params: SamplingParams, **kwargs) -> list[GenerationRequest]:
        """One engine request per choice (`n`); a seeded request seeds choice i with seed + i."""
        return [GenerationRequest(rid if self.n == 1 else f"{rid}-{i}", prompt,
                                  dataclasses.replace(params, seed=None if params.seed is None else
                                                      (params.seed + i) % 2**64), **kwargs)
                for i in range(self.n)]


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[int] | list[StrictStr]
    logprobs: int | None = Field(default=None, ge=0, le=20)


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    """One turn; its other fields (name, tool_calls, ...) reach the chat template as they are.
    Null content (an assistant turn that only called tools) renders as empty text."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    enable_thinking: StrictBool | None = None
    # the checkpoint's template options (enable_thinking, ...): plain values only, never a template
    chat_template_kwargs: dict[str, StrictBool | int | float | StrictStr | None] = Field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[api.Tool] | None = Field(default=None, max_length=128)
    tool_choice: api.ToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: api.ResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None

    def tool_specs(self) -> list[dict[str, Any]] | None:
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None


class Server:
    """Holds what the routes share: the engine, the tokenizer and the names."""

    def __init__(self, engine: AsyncEngine, tokenizer: Tokenizer, model_name: str, max_model_len: int,
                 api_key: str | None = None, default_thinking: bool | None = None):
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.max_model_len, self.api_key = max_model_len, api_key
        self.default_thinking = default_thinking  # None: whatever the chat template does by default
        self.created = int(time.time())
        # one thread: the event loop never waits on a tokenizer, and the tokenizer never runs twice at once
        self._text_worker = ThreadPoolExecutor(1, thread_name_prefix="nemodeploy-tokenize")

    async def off_loop(self, fn: Callable, *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._text_worker, fn, *args)

    def authorized(self, request: Request) -> bool:
        if not self.api_key or request.url.path in OPEN_PATHS:
            return True
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, f"Bearer {self.api_key}".encode())

    # -- parsing -------------------------------------------------------------

    async def parse(self, request: Request, model: type[BaseModel]) -> Any:
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise APIError(413, f"the body is larger than {MAX_BODY_BYTES // 2**20} MiB")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            raise APIError(400, "the body is nested too deeply") from None
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object")
        for key in UNSUPPORTED:
            if body.get(key):
                raise APIError(400, f"'{key}' is not supported by this server", param=key, code="unsupported")
        try:
            parsed = model.model_validate(body)
        except ValidationError as exc:
            # of a union's alternatives, the one that got furthest says most (content.0.text, not content.str)
            err = max(exc.errors(), key=lambda e: len(e["loc"]))
            param = ".".join(str(p) for p in err["loc"] if not _UNION_TAG.match(str(p))) or None
            raise APIError(400, f"{param}: {err['msg'].removeprefix('Value error, ')}", param=param) from None
        if parsed.model != self.model_name:
            raise APIError(404, f"the model '{parsed.model}' does not exist; this server serves "
                           f"'{self.model_name}'", param="model", code="model_not_found")
        return parsed

    async def completion_prompt(self, req: CompletionRequest) -> list[int]:
        if isinstance(req.prompt, str):
            prompt = await self.off_loop(self.tokenizer.encode, req.prompt)
        elif req.prompt and all(isinstance(t, int) for t in req.prompt):
            prompt = list(req.prompt)
        elif len(req.prompt) == 1:
            prompt = await self.off_loop(self.tokenizer.encode, req.prompt[0])
        else:
            raise APIError(400, "prompt must be one string or one list of token ids", param="prompt")
        if not prompt:
            raise APIError(400, "the prompt is empty", param="prompt")
        self.check_token_ids(prompt, "prompt")
        return prompt

    def check_token_ids(self, ids: list[int], param: str) -> None:
        vocab = self.tokenizer.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise APIError(400, f"{param}: token id {bad} is outside the vocabulary [0, {vocab})", param=param)

    async def chat_prompt(self, req: ChatCompletionRequest) -> tuple[list[int], bool, int | None]:
        """(prompt ids, whether it opens a thinking section, the thinking budget reasoning_effort sets)."""
        kwargs = dict(req.chat_template_kwargs)
        try:
            thinking, budget = api.thinking(req.reasoning_effort, kwargs.pop("enable_thinking", req.enable_thinking))
        except ValueError as exc:
            raise APIError(400, str(exc), param="reasoning_effort") from None
        if thinking is None:
            thinking = self.default_thinking
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        for m in messages:
            if isinstance(m.get("content"), list):
                m["content"] = "".join(part["text"] for part in m["content"])
            m.setdefault("content", "")
        try:
            messages = tool_calls.template_messages(messages)
            prompt, opened = await self.off_loop(self.tokenizer.apply_chat_template, messages, thinking, kwargs,
                                                 req.tool_specs())
        except ValueError as exc:  # TemplateError, or tool-call arguments that are not JSON
            raise APIError(400, str(exc), param="messages") from None
        return prompt, opened, budget

    def max_tokens(self, requested: int | None, prompt_len: int, default: int | None, prompt_param: str) -> int:
        room = self.max_model_len - prompt_len
        if room < 1:
            raise APIError(400, f"the prompt ({prompt_len} tokens) fills the context length "
                           f"{self.max_model_len}", param=prompt_param)
        if requested is None:
            return min(default, room) if default else room
        if requested > room:
            raise APIError(400, f"max_tokens ({requested}) plus the prompt ({prompt_len} tokens) exceeds the "
                           f"context length {self.max_model_len}", param="max_tokens")
        return requested

    # -- running -------------------------------------------------------------

    async def choice_outputs(self, requests: list[GenerationRequest]) -> "_Streams":
        """The outputs of each choice's request; none is left running when one is refused."""
        streams = _Streams()
        try:
            for request in requests:
                streams.append(await self.outputs(request))
        except BaseException:
            await streams.aclose()
            raise
        return streams

    async def outputs(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """The engine's outputs, with its admission errors mapped to HTTP errors."""
        gen = self.engine.generate(request)
        try:
            first = await gen.__anext__()
        except QueueFull as exc:
            raise APIError(429, str(exc), code="queue_full") from None
        except (RequestTooLong, ValueError) as exc:
            raise APIError(400, str(exc)) from None
        except EngineDead as exc:
            raise APIError(503, str(exc)) from None
        if first.error is not None:
            await gen.aclose()
            raise APIError(500, first.error, code="engine_error")
        return _chain(first, gen)


async def _chain(first: RequestOutput, rest: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    try:
        yield first
        async for out in rest:
            yield out
    finally:
        await rest.aclose()


class _Streams(list):
    """The output streams of a request's choices; closing them aborts whatever still runs."""

    async def aclose(self) -> None:
        for stream in self:
            await stream.aclose()


async def _merge(streams: _Streams) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(choice index, output) from every stream, in the order they come."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream) -> None:
        try:
            async for out in stream:
                await queue.put((index, out, None))
            await queue.put((index, None, None))
        except Exception as exc:  # EngineDead: the merged stream raises it
            await queue.put((index, None, exc))

    tasks = [asyncio.ensure_future(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        live = len(tasks)
        while live:
            index, out, exc = await queue.get()
            if exc is not None:
                raise exc
            if out is None:
                live -= 1
            else:
                yield index, out
    finally:
        for task in tasks:
            task.cancel()


async def _collect(http: Request, streams: _Streams) -> list[list[RequestOutput]]:
    """Gather a non-streamed answer, each choice's outputs; a client that hangs up aborts the request."""

    async def gather() -> list[list[RequestOutput]]:
        outs: list[list[RequestOutput]] = [[] for _ in streams]
        async for index, out in _merge(streams):
            outs[index].append(out)
        return outs

    task = asyncio.ensure_future(gather())
    try:
        while not task.done():
            await asyncio.wait([task], timeout=0.1)
            if not task.done() and await http.is_disconnected():
                task.cancel()
                await asyncio.wait([task])  # let the cancellation reach the engine stream (it aborts)
                raise APIError(499, "the client closed the request")  # nobody reads this answer
        outs = task.result()
    except EngineDead as exc:
        raise APIError(503, str(exc)) from None
    finally:
        await streams.aclose()
    failed = next((o[-1] for o in outs if o[-1].error is not None), None)
    if failed is not None:
        raise APIError(500, failed.error, code="engine_error")
    return outs


def _stream(base: dict, streams: _Streams, choice, stream_options, opening: dict | None = None):
    """SSE for a generation: an optional opening choice per choice index, one chunk per output that
    `choice(index, output)` turns into a choice (None skips it), the usage chunk when asked for, then
    [DONE]. A request the engine fails mid-way ends with an error event, then [DONE], as OpenAI
    streams errors."""
    include_usage = bool(stream_options and stream_options.include_usage)

    async def events():
        if opening is not None:
            for index in range(len(streams)):
                yield _sse({**base, "choices": [{**opening, "index": index}]})
        finished: list[RequestOutput] = []
        try:
            async for index, out in _merge(streams):
                if out.error is not None:
                    yield _sse(APIError(500, out.error, code="engine_error").body())
                    break
                chunk = choice(index, out)
                if chunk is not None:
                    yield _sse({**base, "choices": [chunk]})
                if out.finished:
                    finished.append(out)
            else:
                if include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(finished)})
        except EngineDead as exc:
            yield _sse(APIError(503, str(exc)).body())
        yield _sse("[DONE]")

    return _event_stream(events(), streams)


def _event_stream(events: AsyncIterator[str], streams: _Streams) -> StreamingResponse:
    """SSE response; when the client goes away mid-stream the request is aborted at once."""

    async def guarded():
        try:
            async for event in events:
                yield event
        finally:
            await streams.aclose()

    return StreamingResponse(guarded(), media_type="text/event-stream")


def _usage(finished: list[RequestOutput]) -> dict[str, int]:
    """Usage over a request's choices: the prompt once, every choice's completion."""
    prompt, completion = finished[0].prompt_tokens, sum(out.completion_tokens for out in finished)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _served_fields(server: Server) -> dict[str, dict]:
    """What the request models cannot know: the served name, the vocabulary, the template's options."""
    token = {"type": "integer", "minimum": 0, "maximum": server.tokenizer.vocab_size - 1}
    text = {"type": "string", "minLength": 1}
    scalar = {"type": ["boolean", "integer", "number", "string", "null"]}
    return {
        "model": {"type": "string", "enum": [server.model_name], "description": "the served model"},
        "stop_token_ids": {"type": "array", "items": token, "maxItems": 256},
        "prompt": {"anyOf": [text, {"type": "array", "items": token, "minItems": 1},
                             {"type": "array", "items": text, "minItems": 1, "maxItems": 1}]},
        "chat_template_kwargs": {"type": "object", "additionalProperties": False,
                                 "properties": {name: scalar for name in sorted(server.tokenizer.template_options)}},
    }


def _openapi(app: FastAPI, server: Server) -> dict:
    """FastAPI's schema with the request bodies the routes parse themselves (they read the raw
    body to give OpenAI's errors), so that clients and fuzzers see every field."""
    from fastapi.openapi.utils import get_openapi

    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        served = _served_fields(server)
        for path, model in (("/v1/completions", CompletionRequest), ("/v1/chat/completions", ChatCompletionRequest)):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            body["properties"].update({k: v for k, v in served.items() if k in body["properties"]})
            components[model.__name__] = body
            ref = {"$ref": f"#/components/schemas/{model.__name__}"}
            schema["paths"][path]["post"]["requestBody"] = {"required": True,
                                                            "content": {"application/json": {"schema": ref}}}
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(server: Server) -> FastAPI:
    async def require_key(request: Request) -> None:
        # a dependency, not an HTTP middleware: those hide client disconnects from the routes
        if not server.authorized(request):
            raise APIError(401, "a valid API key is required (Authorization: Bearer ...)", code="invalid_api_key")

    app = FastAPI(title="nemodeploy", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(require_key)])
    registry = make_registry(server.engine.stats, server.model_name)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict:
        return _openapi(app, server)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if server.engine.alive else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(render(registry), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": server.model_name, "object": "model",
                                            "created": server.created, "owned_by": "nemodeploy",
                                            "max_model_len": server.max_model_len}]}

    @app.post("/v1/completions")
    async def completions(http: Request):
        req: CompletionRequest = await server.parse(http, CompletionRequest)
        server.check_token_ids(req.stop_token_ids, "stop_token_ids")
        prompt = await server.completion_prompt(req)
        params = req.sampling(server.max_tokens(req.max_tokens, len(prompt), 16, "prompt"), req.logprobs)
        rid = f"cmpl-{uuid.uuid4().hex}"
        streams = await server.choice_outputs(req.choices(rid, prompt, params))
        base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": server.model_name}
        logprobs = functools.partial(api.completion_logprobs, server.tokenizer)

        if req.stream:
            def choice(index: int, out: RequestOutput) -> dict:
                return {"index": index, "text": out.text, "logprobs": logprobs(out.logprobs),
                        "finish_reason": out.finish_reason}
            return _stream(base, streams, choice, req.stream_options)

        collected = await _collect(http, streams)
        choices = []
        for index, outs in enumerate(collected):
            lps = [lp for o in outs for lp in o.logprobs or []] if req.logprobs is not None else None
            choices.append({"index": index, "text": "".join(o.text for o in outs), "logprobs": logprobs(lps),
                            "finish_reason": outs[-1].finish_reason})
        return {**base, "choices": choices, "usage": _usage([o[-1] for o in collected])}

    @app.post("/v1/chat/completions")
    async def chat(http: Request):
        req: ChatCompletionRequest = await server.parse(http, ChatCompletionRequest)
        server.check_token_ids(req.stop_token_ids, "stop_token_ids")
        try:
            guided = api.guided(req.tool_specs(), req.tool_choice, req.parallel_tool_calls, req.response_format)
        except ValueError as exc:
            raise APIError(400, str(exc), param="tool_choice" if req.tool_choice else "response_format") from None
        prompt, thinking, budget = await server.chat_prompt(req)
        requested = req.max_completion_tokens or req.max_tokens
        top = (req.top_logprobs or 0) if req.logprobs else None
        params = req.sampling(server.max_tokens(requested, len(prompt), None, "messages"), top, guided=guided)
        if budget is not None and params.thinking_budget is None:
            params.thinking_budget = budget
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        streams = await server.choice_outputs(req.choices(rid, prompt, params, thinking=thinking))
        base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": server.model_name}
        tools = req.tool_specs() if req.tool_choice != "none" else None
        texts = [api.ChoiceText(tools) for _ in streams]
        logprobs = functools.partial(api.chat_logprobs, server.tokenizer)

        if req.stream:
            def choice(index: int, out: RequestOutput) -> dict | None:
                delta: dict[str, Any] = {}
                if out.reasoning_text:
                    delta["reasoning_content"] = out.reasoning_text
                content, calls = texts[index].delta(out.text, out.finished)
                if content:
                    delta["content"] = content
                if calls:
                    delta["tool_calls"] = calls
                if not (delta or out.finished or out.logprobs):
                    return None
                reason = api.finish_reason(out.finish_reason, texts[index].num_calls > 0)
                return {"index": index, "delta": delta, "logprobs": logprobs(out.logprobs), "finish_reason": reason}
            opening = {"delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            return _stream(base, streams, choice, req.stream_options, opening)

        collected = await _collect(http, streams)
        choices = []
        for index, outs in enumerate(collected):
            content, calls = texts[index].whole("".join(o.text for o in outs))
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            if thinking:
                message["reasoning_content"] = "".join(o.reasoning_text for o in outs)
            lps = [lp for o in outs for lp in o.logprobs or []] if req.logprobs else None
            choices.append({"index": index, "message": message, "logprobs": logprobs(lps),
                            "finish_reason": api.finish_reason(outs[-1].finish_reason, bool(calls))})
        return {**base, "object": "chat.completion", "choices": choices, "usage": _usage([o[-1] for o in collected])}

    return app


def build_app(config: EngineConfig, api_key: str | None = None) -> tuple[FastAPI, AsyncEngine]:
    """Load the model, start the engine loop and return the app serving it."""
    from nemodeploy.engine.core import LLMEngine

    engine = LLMEngine(config)
    async_engine = AsyncEngine(engine).start()
    name = config.served_model_name or Path(config.model).name
    server = Server(async_engine, engine.tokenizer, name, config.max_model_len, api_key, config.default_thinking)
    return create_app(server), async_engine


def listen(host: str, port: int) -> socket.socket:
    """The bound listening socket, before any model is loaded: a port in use is an OSError here,
    never after the server said it serves."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT, not another listener
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class _Stopped(Exception):
    """SIGTERM after the graceful shutdown: leave quietly, like Ctrl-C."""


def _raise_stopped(signum, frame) -> None:
    raise _Stopped(signum)


def run(config: EngineConfig, sock: socket.socket, api_key: str | None = None,
        on_ready: Callable[[], None] | None = None) -> None:
    """Serve on `sock` (from `listen`) in the foreground until SIGINT / SIGTERM. On the signal,
    open streams end with finish_reason "abort" and [DONE], the server shuts down gracefully, the
    engine stops and this returns (no traceback, no KeyboardInterrupt)."""
    import uvicorn

    app, async_engine = build_app(config, api_key)
    if on_ready is not None:
        app.router.on_startup.append(on_ready)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            async_engine.end_streams()
            super().handle_exit(sig, frame)

    server = Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if main_thread else None
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):
        pass  # uvicorn re-raises the signal it handled once it has shut down
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        async_engine.shutdown()
        sock.close()
