"""The seam between the engine core and the model: an Executor runs one scheduled step.

The core never touches tensors. Each step it hands a `SchedulerOutput` (plain data:
token ids, positions, block tables, Mamba slots, sampling settings) to the executor
and gets back, per sampled request, the tokens it decided and the drafts it proposes
for the next step.

A distributed executor keeps this shape: it sends the same `SchedulerOutput` to the
ModelRunner on every rank (each runs its shard of the forward over its own cache) and
returns rank 0's `StepResult`s. It must also report the cache it allocated
(`cache_info`), since the scheduler's block and slot counts must match it.

Every rank samples too, with the same per-request seeds, because the tokens a step
keeps decide each rank's Mamba rollback and MTP chain inside the same `execute`: the
ranks agree as long as their logits are bitwise equal after the final all-reduce (true
for replicated lm_head outputs). Where that cannot be guaranteed, rank 0 must broadcast
its tokens before the rollback.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.protocol import TokenLogprob
from nemodeploy.engine.scheduler import SchedulerOutput


@dataclass
class StepResult:
    tokens: list[int] = field(default_factory=list)  # accepted drafts + one new token; empty mid-prefill
    drafts: list[int] = field(default_factory=list)  # MTP proposals for the tokens after tokens[-1]
    logprobs: list[TokenLogprob] | None = None  # one per token, when the request asked


class ExecutorDead(RuntimeError):
    """The executor can run no step again (a rank is gone): the engine stops, no request is retried.
    `rank` and `node` name the rank that failed, where the executor knows it."""

    rank: int | None = None
    node: str | None = None


class Executor(ABC):
    @abstractmethod
    def execute(self, step: SchedulerOutput) -> dict[str, StepResult]: ...

    @abstractmethod
    def cache_info(self) -> dict[str, int]:
        """num_kv_blocks, block_size, num_mamba_slots and bytes of the allocated cache."""

    def check(self, timeout: float) -> None:
        """Raise ExecutorDead unless every rank answers within `timeout`; in-process executors always do."""

    def shutdown(self) -> None:
        pass


class LocalExecutor(Executor):
    """One ModelRunner in this process, on one device."""

    def __init__(self, config: EngineConfig):
        from nemodeploy.engine.model_runner import ModelRunner

        self.runner = ModelRunner(config)

    def execute(self, step: SchedulerOutput) -> dict[str, StepResult]:
        return self.runner.execute(step)

    def cache_info(self) -> dict[str, int]:
        return self.runner.cache_info()
