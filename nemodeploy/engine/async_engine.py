"""AsyncEngine: runs LLMEngine's step loop on a background thread, speaks asyncio to the server.

Only the loop thread touches the engine. Requests and aborts reach it through an
inbox it drains before every step, so admission errors (queue full, too long) are
decided in order by the engine itself and handed back to the caller's future.
Outputs go back to each request's asyncio.Queue with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from concurrent.futures import Future

from nemodeploy.engine.core import LLMEngine
from nemodeploy.engine.protocol import EngineStats, GenerationRequest, RequestOutput

log = logging.getLogger(__name__)


class EngineDead(RuntimeError):
    pass


_CLOSING = object()  # put on every stream when the server shuts down


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._inbox: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stats = engine.stats()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="nemodeploy-engine", daemon=True)

    def start(self) -> "AsyncEngine":
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._inbox.put(None)
        self._thread.join(timeout)
        self.engine.executor.shutdown()

    def end_streams(self) -> None:
        """The server is shutting down: every open stream ends now with finish_reason "abort"
        (its request is aborted), so clients get a clean end instead of a cut connection.
        Safe from any thread, a signal handler included."""
        for request_id in list(self._streams):
            self._deliver(request_id, _CLOSING)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def stats(self) -> EngineStats:
        """The stats as of the end of the last step (a snapshot; safe from any thread)."""
        return self._stats

    # -- the caller's side (event loop) ---------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs; leaving early (client gone, cancelled) aborts it."""
        if not self.alive:
            raise EngineDead("the engine loop is not running")
        loop = asyncio.get_running_loop()
        stream: asyncio.Queue = asyncio.Queue()
        accepted: Future = Future()
        self._streams[request.request_id] = (loop, stream)
        self._inbox.put(("add", request, accepted))
        try:
            await asyncio.wrap_future(accepted)
        except BaseException:
            self._streams.pop(request.request_id, None)
            raise
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if item is _CLOSING:
                    yield RequestOutput(request.request_id, [], "", finished=True, finish_reason="abort")
                    break
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            self._streams.pop(request.request_id, None)
            if not finished:
                self._inbox.put(("abort", request.request_id, None))

    # -- the loop thread -----------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain(block=not self.engine.has_unfinished())
                if self._stop.is_set():
                    break
                if self.engine.has_unfinished():
                    outputs = self.engine.step()
                    self._stats = self.engine.stats()
                    for out in outputs:
                        self._deliver(out.request_id, out)
        except BaseException as exc:  # the loop is dead: fail everyone waiting, /health turns 503
            log.exception("engine loop failed")
            self.error = exc
            for request_id in list(self._streams):
                self._deliver(request_id, EngineDead(f"engine loop failed: {exc!r}"))

    def _drain(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while item is not None:
            kind, payload, future = item
            if kind == "add":
                try:
                    self.engine.add_request(payload)
                    future.set_result(None)
                except Exception as exc:
                    future.set_exception(exc)
            else:
                out = self.engine.abort(payload)
                if out is not None:
                    self._deliver(payload, out)
            self._stats = self.engine.stats()
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                item = None

    def _deliver(self, request_id: str, item: RequestOutput | BaseException | object) -> None:
        target = self._streams.get(request_id)
        if target is not None:
            loop, stream = target
            loop.call_soon_threadsafe(stream.put_nowait, item)

