"""OpenAI-compatible HTTP server over AsyncEngine: /v1/models, /v1/completions,
/v1/chat/completions (SSE streaming or not), /health and /metrics.

Errors use OpenAI's body `{"error": {"message", "type", "param", "code"}}`: 400 for a
request that cannot be served as written, 401 without the API key, 404 for an
unknown model, 429 when the waiting queue is full, 503 when the engine loop died.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nemodeploy.engine.async_engine import AsyncEngine, EngineDead
from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.metrics import make_registry, render
from nemodeploy.engine.protocol import GenerationRequest, QueueFull, RequestOutput, RequestTooLong, SamplingParams
from nemodeploy.engine.tokenizer import Tokenizer

# OpenAI fields this engine does not implement: asking for them is an error, not a silent no-op
UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "suffix", "best_of", "logit_bias", "tools", "functions",
               "response_format", "presence_penalty", "frequency_penalty")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               429: "rate_limit_error", 499: "client_closed_request", 503: "service_unavailable"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": ERROR_TYPES.get(self.status, "server_error"),
                "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by both endpoints; unknown fields are ignored as OpenAI does."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    thinking_budget: int | None = Field(default=None, ge=0)

    def sampling(self, max_tokens: int) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, seed=self.seed, stop=stop, stop_token_ids=self.stop_token_ids,
                              ignore_eos=self.ignore_eos, thinking_budget=self.thinking_budget)


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    enable_thinking: bool | None = None
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)


class Server:
    """Holds what the routes share: the engine, the tokenizer and the names."""

    def __init__(self, engine: AsyncEngine, tokenizer: Tokenizer, model_name: str, max_model_len: int,
                 api_key: str | None = None, default_thinking: bool | None = None):
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.max_model_len, self.api_key = max_model_len, api_key
        self.default_thinking = default_thinking  # None: whatever the chat template does by default
        self.created = int(time.time())

    # -- parsing -------------------------------------------------------------

    async def parse(self, request: Request, model: type[BaseModel]) -> Any:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object")
        for key in UNSUPPORTED:
            if body.get(key):
                raise APIError(400, f"'{key}' is not supported by this server", param=key, code="unsupported")
        try:
            parsed = model.model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise APIError(400, f"{param}: {err['msg']}", param=param) from None
        if parsed.model != self.model_name:
            raise APIError(404, f"the model '{parsed.model}' does not exist; this server serves "
                           f"'{self.model_name}'", param="model", code="model_not_found")
        return parsed

    def completion_prompt(self, req: CompletionRequest) -> list[int]:
        if isinstance(req.prompt, str):
            return self.tokenizer.encode(req.prompt)
        if req.prompt and all(isinstance(t, int) for t in req.prompt):
            return list(req.prompt)
        if len(req.prompt) == 1:
            return self.tokenizer.encode(req.prompt[0])
        raise APIError(400, "prompt must be one string or one list of token ids", param="prompt")

    def chat_prompt(self, req: ChatCompletionRequest) -> tuple[list[int], bool]:
        kwargs = dict(req.chat_template_kwargs)
        thinking = kwargs.pop("enable_thinking", req.enable_thinking)
        if thinking is None:
            thinking = self.default_thinking
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        for m in messages:
            if isinstance(m.get("content"), list):
                m["content"] = "".join(p.get("text", "") for p in m["content"] if p.get("type") == "text")
        try:
            return self.tokenizer.apply_chat_template(messages, thinking, kwargs)
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages") from None

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
        return _chain(first, gen)


async def _chain(first: RequestOutput, rest: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    try:
        yield first
        async for out in rest:
            yield out
    finally:
        await rest.aclose()


async def _collect(http: Request, outputs: AsyncIterator[RequestOutput]) -> list[RequestOutput]:
    """Gather a non-streamed answer; a client that hangs up aborts the request."""

    async def gather() -> list[RequestOutput]:
        return [o async for o in outputs]

    task = asyncio.ensure_future(gather())
    try:
        while not task.done():
            await asyncio.wait([task], timeout=0.1)
            if not task.done() and await http.is_disconnected():
                task.cancel()
                await asyncio.wait([task])  # let the cancellation reach the engine stream (it aborts)
                raise APIError(499, "the client closed the request")  # nobody reads this answer
        return task.result()
    finally:
        await outputs.aclose()


def _stream(base: dict, outputs, choice, stream_options, opening: dict | None = None):
    """SSE for a generation: an optional opening choice, one chunk per output that `choice` turns
    into a choice (None skips it), the usage chunk when asked for, then [DONE]."""
    include_usage = bool(stream_options and stream_options.include_usage)

    async def events():
        if opening is not None:
            yield _sse({**base, "choices": [opening]})
        async for out in outputs:
            chunk = choice(out)
            if chunk is not None:
                yield _sse({**base, "choices": [chunk]})
            if out.finished and include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(out)})
        yield _sse("[DONE]")

    return _event_stream(events(), outputs)


def _event_stream(events: AsyncIterator[str], outputs: AsyncIterator[RequestOutput]) -> StreamingResponse:
    """SSE response; when the client goes away mid-stream the request is aborted at once."""

    async def guarded():
        try:
            async for event in events:
                yield event
        finally:
            await outputs.aclose()

    return StreamingResponse(guarded(), media_type="text/event-stream")


def _usage(out: RequestOutput) -> dict[str, int]:
    return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
            "total_tokens": out.prompt_tokens + out.completion_tokens}


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def create_app(server: Server) -> FastAPI:
    async def require_key(request: Request) -> None:
        # a dependency, not an HTTP middleware: those hide client disconnects from the routes
        if server.api_key and request.url.path.startswith("/v1/"):
            if request.headers.get("authorization") != f"Bearer {server.api_key}":
                raise APIError(401, "a valid API key is required (Authorization: Bearer ...)", code="invalid_api_key")

    app = FastAPI(title="nemodeploy", docs_url=None, redoc_url=None, dependencies=[Depends(require_key)])
    registry = make_registry(server.engine.stats, server.model_name)

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

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
        prompt = server.completion_prompt(req)
        params = req.sampling(server.max_tokens(req.max_tokens, len(prompt), 16, "prompt"))
        rid = f"cmpl-{uuid.uuid4().hex}"
        outputs = await server.outputs(GenerationRequest(rid, prompt, params))
        base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": server.model_name}

        if req.stream:
            def choice(out: RequestOutput) -> dict:
                return {"index": 0, "text": out.text, "logprobs": None, "finish_reason": out.finish_reason}
            return _stream(base, outputs, choice, req.stream_options)

        outs = await _collect(http, outputs)
        text = "".join(o.text for o in outs)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": outs[-1].finish_reason}
        return {**base, "choices": [choice], "usage": _usage(outs[-1])}

    @app.post("/v1/chat/completions")
    async def chat(http: Request):
        req: ChatCompletionRequest = await server.parse(http, ChatCompletionRequest)
        prompt, thinking = server.chat_prompt(req)
        requested = req.max_completion_tokens or req.max_tokens
        params = req.sampling(server.max_tokens(requested, len(prompt), None, "messages"))
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        outputs = await server.outputs(GenerationRequest(rid, prompt, params, thinking=thinking))
        base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": server.model_name}

        if req.stream:
            def choice(out: RequestOutput) -> dict | None:
                delta = {}
                if out.reasoning_text:
                    delta["reasoning_content"] = out.reasoning_text
                if out.text:
                    delta["content"] = out.text
                return {"index": 0, "delta": delta, "finish_reason": out.finish_reason} if delta or out.finished else None
            opening = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            return _stream(base, outputs, choice, req.stream_options, opening)

        outs = await _collect(http, outputs)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(o.text for o in outs)}
        if thinking:
            message["reasoning_content"] = "".join(o.reasoning_text for o in outs)
        choice = {"index": 0, "message": message, "finish_reason": outs[-1].finish_reason, "logprobs": None}
        return {**base, "object": "chat.completion", "choices": [choice], "usage": _usage(outs[-1])}

    return app


def build_app(config: EngineConfig, api_key: str | None = None) -> tuple[FastAPI, AsyncEngine]:
    """Load the model, start the engine loop and return the app serving it."""
    from nemodeploy.engine.core import LLMEngine

    engine = LLMEngine(config)
    async_engine = AsyncEngine(engine).start()
    name = config.served_model_name or Path(config.model).name
    server = Server(async_engine, engine.tokenizer, name, config.max_model_len, api_key, config.default_thinking)
    return create_app(server), async_engine


def run(config: EngineConfig, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
        on_ready: Callable[[], None] | None = None) -> None:
    """Serve in the foreground until SIGINT / SIGTERM; the engine stops with the server."""
    import uvicorn

    app, async_engine = build_app(config, api_key)
    if on_ready is not None:
        app.router.on_startup.append(on_ready)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        async_engine.shutdown()
