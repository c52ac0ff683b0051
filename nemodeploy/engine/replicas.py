"""Data-parallel replicas behind one server: dp engines, each its own tp / ep / pp group, one endpoint.

`ReplicaSet` speaks the `AsyncEngine` interface the server uses (`generate`, `alive`,
`stats`, `end_streams`, `shutdown`), so `server.create_app` serves it unchanged. Each
request goes to the live replica with the fewest outstanding requests (requests admitted
and not yet finished there); ties go round-robin, so an idle set spreads requests evenly.

Where each replica runs is the caller's business: it builds every replica's executor
(e.g. a RayExecutor on the placement group the launcher made for that replica's ranks)
and hands over the started AsyncEngines.

A replica fails alone. Its engine loop dying (a rank gone mid-step) fails the requests it
held, and nothing else; a replica whose ranks die while it is idle is found by `probe`
(the executor's `check`), on demand and, with `probe_interval_s`, in the background.
Either way no new request goes there, and `health()` says which replica failed and why.
The set is alive while one replica is.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from nemodeploy.engine.async_engine import AsyncEngine, EngineDead
from nemodeploy.engine.executor import ExecutorDead
from nemodeploy.engine.latency import LatencyStats
from nemodeploy.engine.protocol import EngineStats, GenerationRequest, RequestOutput

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0


@dataclass
class ReplicaHealth:
    replica: int
    outstanding: int
    error: BaseException | None  # None: serving

    @property
    def ok(self) -> bool:
        return self.error is None


class ReplicaSet:
    def __init__(self, engines: list[AsyncEngine], probe_interval_s: float | None = None):
        if not engines:
            raise ValueError("a replica set needs at least one engine")
        self.engines = list(engines)
        self.outstanding = [0] * len(engines)
        self._failures: list[BaseException | None] = [None] * len(engines)
        self._turn = 0  # where the round-robin among equally loaded replicas resumes
        self._stop = threading.Event()
        if probe_interval_s:
            threading.Thread(target=self._watch, args=(probe_interval_s,), daemon=True,
                             name="nemodeploy-replica-probe").start()

    # -- health --------------------------------------------------------------

    def failure(self, index: int) -> BaseException | None:
        """Why replica `index` serves no more, or None."""
        if self._failures[index] is None and not self.engines[index].alive:
            self._failures[index] = self.engines[index].error or EngineDead("the engine loop is not running")
        return self._failures[index]

    def probe(self, timeout: float = PROBE_TIMEOUT_S) -> None:
        """Ask every replica still serving whether all its ranks answer; mark the ones that do not."""
        for index, engine in enumerate(self.engines):
            if self.failure(index) is not None:
                continue
            try:
                engine.engine.executor.check(timeout)
            except Exception as err:  # noqa: BLE001 - any failure to answer takes the replica out
                log.error("replica %d failed its probe: %s", index, err)
                self._failures[index] = err

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.probe()

    def health(self) -> list[ReplicaHealth]:
        return [ReplicaHealth(i, self.outstanding[i], self.failure(i)) for i in range(len(self.engines))]

    def report(self, node_names: Mapping[str, str] | None = None) -> tuple[int, dict]:
        """(HTTP status, JSON body) for /health: 200 while a replica serves ("ok", or "degraded" with the
        failed ones named), 503 once none does, with the first failure on top. A failed rank is named by
        its replica, its rank in the replica, its node's address and (from `node_names`) its name."""
        names = node_names or {}

        def failure(error: BaseException) -> dict:
            if isinstance(error, ExecutorDead) and error.rank is not None:
                return {"error": str(error), "rank": error.rank, "node": names.get(error.node, error.node),
                        "address": error.node}
            return {"error": str(error)}

        states = self.health()
        body = {"replicas": [{"replica": h.replica, "status": "ok" if h.ok else "failed",
                              "outstanding": h.outstanding, **(failure(h.error) if h.error else {})} for h in states]}
        failed = [h for h in states if not h.ok]
        if len(failed) == len(states):
            return 503, {"status": "failed", **failure(failed[0].error), **body}
        return 200, {"status": "degraded" if failed else "ok", **body}

    @property
    def alive(self) -> bool:
        return any(self.failure(i) is None for i in range(len(self.engines)))

    @property
    def error(self) -> BaseException | None:
        """The first replica's failure once none serves (AsyncEngine's meaning), else None."""
        return None if self.alive else self.failure(0)

    # -- serving -------------------------------------------------------------

    def _pick(self, exclude: set[int]) -> int | None:
        """The live replica with the fewest outstanding requests; ties round-robin from `_turn`."""
        n = len(self.engines)
        order = [(self._turn + k) % n for k in range(n)]
        live = [i for i in order if i not in exclude and self.failure(i) is None]
        if not live:
            return None
        chosen = min(live, key=lambda i: self.outstanding[i])  # min keeps the first of equals
        self._turn = (chosen + 1) % n
        return chosen

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """The request's outputs from the replica it is routed to. A replica found dead when the
        request reaches it passes the request on to the next; once it ran there, it ends there."""
        tried: set[int] = set()
        while True:
            index = self._pick(tried)
            if index is None:
                raise EngineDead("no engine replica is serving")
            tried.add(index)
            self.outstanding[index] += 1
            stream = self.engines[index].generate(request)
            try:
                try:
                    first = await stream.__anext__()
                except EngineDead:
                    continue
                yield first
                async for out in stream:
                    yield out
                return
            finally:
                await stream.aclose()  # a client gone early: the replica aborts the request
                self.outstanding[index] -= 1

    def stats(self) -> EngineStats:
        """The replicas' stats summed (capacities, counters, histograms); checkpoint bytes are per rank."""
        return merge_stats([engine.stats() for engine in self.engines])

    def end_streams(self) -> None:
        for engine in self.engines:
            engine.end_streams()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for engine in self.engines:
            engine.shutdown(timeout)


def merge_stats(parts: list[EngineStats]) -> EngineStats:
    total = EngineStats(latency=LatencyStats())
    for part in parts:
        for f in dataclasses.fields(EngineStats):
            value = getattr(part, f.name)
            if f.name == "requests_finished_total":
                for reason, count in value.items():
                    total.requests_finished_total[reason] = total.requests_finished_total.get(reason, 0) + count
            elif f.name == "latency":
                if value is not None:
                    _add_latency(total.latency, value)
            elif f.name == "mamba_checkpoint_bytes":
                total.mamba_checkpoint_bytes = max(total.mamba_checkpoint_bytes, value)
            else:
                setattr(total, f.name, getattr(total, f.name) + value)
    return total


def _add_latency(total: LatencyStats, part: LatencyStats) -> None:
    for f in dataclasses.fields(LatencyStats):
        into, add = getattr(total, f.name), getattr(part, f.name)
        into.counts = [a + b for a, b in zip(into.counts, add.counts)]
        into.total += add.total
