"""RayExecutor: the embedded engine across workers, one Ray actor per rank.

The ranks are the bundles of one placement group (pinned to the plan's nodes when their
IPs are given). Without pipeline parallel they form torch.distributed's default group:
gloo on CPU, NCCL on GPU, rendezvous over TCP at a free port on rank 0's node. Every step
the same `SchedulerOutput` (put in the object store once) goes to every rank's
ModelRunner; the ranks meet in the model's all-reduces and all sample the same tokens (see
executor.py), so rank 0's results are the step's.

With pp_size > 1 the ranks are pp stages of max(tp_size, ep_size) ranks each (rank =
stage x group + rank in the stage); each stage is its own torch.distributed group over
its layers (pipeline.py). A step is cut into pp micro-batches, all sent at once: stage s
of micro-batch m takes the hidden states of stage s - 1 (the object its first rank put in
the object store, fetched rank to rank, never through this process) while stage s - 1
already runs micro-batch m + 1. Each rank runs its micro-batches strictly in the order
sent (a ticket each), so the ranks of a stage always meet in the same collective. With
speculative decoding the last stage verifies and drafts, and a commit call (the next ticket)
tells the earlier stages how many tokens each sequence kept, before its next step.

A rank that dies (its process, its node) makes `execute` raise `EngineWorkerError`
naming the rank and its node. The surviving ranks are then stuck in a collective that
will never complete: the executor is done for, and `shutdown` kills them all.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import timedelta

import ray

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.executor import Executor, ExecutorDead, StepResult
from nemodeploy.engine.model.parallel import ParallelConfig, PipelineStage
from nemodeploy.engine.pipeline import micro_batches, pipeline_stages
from nemodeploy.engine.scheduler import SchedulerOutput
from nemodeploy.models.config import NemotronHConfig
from nemodeploy.net import free_port

# A collective that waits this long means a peer is gone; gloo / NCCL then raise instead of hanging forever.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


class EngineWorkerError(ExecutorDead):
    """A rank of the engine failed or is unreachable; the message names the rank and its node."""

    def __init__(self, rank: int, node: str, detail: str):
        super().__init__(f"engine rank {rank} on node {node} failed: {detail}")
        self.rank, self.node = rank, node


@ray.remote
class RankWorker:
    """One rank: a process of its stage's torch.distributed group and a ModelRunner over its shard."""

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        return free_port(self.node_ip())

    def start(self, config: dict, parallel: ParallelConfig, stage: PipelineStage | None, group_rank: int,
              init_method: str, env: Mapping[str, str], num_threads: int) -> dict[str, int]:
        import torch
        import torch.distributed as dist

        from nemodeploy.engine.model_runner import ModelRunner

        os.environ.update(env)
        torch.set_num_threads(num_threads)
        engine_config = EngineConfig(**config)
        backend = "nccl" if engine_config.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=group_rank, world_size=parallel.world_size,
                                timeout=COLLECTIVE_TIMEOUT)
        self.runner = ModelRunner(engine_config, parallel, stage)
        self._turn = threading.Condition()
        self._next_ticket = 0
        return self.runner.cache_info()

    def execute(self, step: SchedulerOutput) -> dict[str, StepResult]:
        return self.runner.execute(step)

    def run_stage(self, ticket: int, step: SchedulerOutput, upstream: list | None) -> list | dict[str, StepResult]:
        """Micro-batch number `ticket` through this rank's stage, after every earlier ticket.

        `upstream` is [the outer ref of the previous stage's output] (nested, so that this call
        runs even when that stage failed and the ticket is used up either way). A stage before
        the last returns [a ref of its hidden states] for the next; the last returns the tokens.
        """
        def run():
            hidden = None
            if upstream is not None:
                (inner,) = ray.get(upstream[0])
                hidden = ray.get(inner) if inner is not None else None
            if self.runner.stage.last:
                return self.runner.execute(step, hidden)
            out = self.runner.forward_stage(step, hidden)
            return [ray.put(out) if out is not None else None]

        return self._in_turn(ticket, run)

    def commit_stage(self, ticket: int, num_kept: dict[str, int]) -> None:
        """After a speculative step, in ticket order: the stages before the last roll their Mamba states back."""
        self._in_turn(ticket, lambda: None if self.runner.stage.last else self.runner.commit_stage(num_kept))

    def _in_turn(self, ticket: int, work):
        with self._turn:
            self._turn.wait_for(lambda: self._next_ticket == ticket)
            try:
                return work()
            finally:
                self._next_ticket += 1
                self._turn.notify_all()


def rank_resources(config: EngineConfig) -> dict[str, float]:
    """What one rank's bundle holds: a GPU for a CUDA engine, a CPU otherwise."""
    return {"GPU": 1} if config.device.startswith("cuda") else {"CPU": 1}


class RayExecutor(Executor):
    """`max(tp_size, ep_size) x pp_size` ranks on a Ray cluster this process is connected to (`ray.init`).

    `placement_group` (ready, bundle i for rank i, e.g. pinned to a plan's nodes by the
    caller) decides where the ranks run, and the executor owns it from then on (`shutdown`
    removes it); without one the ranks are packed wherever the cluster has room. `env` is set in every
    rank before the process group starts (e.g. GLOO_SOCKET_IFNAME), one mapping for all
    ranks or one per rank; without it the ranks keep the environment their raylet gave them.
    `stage_layers` ([start, end) per stage, e.g. the plan's split) says which layers each
    pipeline stage holds; without it the layers are split evenly.
    """

    def __init__(self, config: EngineConfig, tp_size: int = 1, ep_size: int = 1, pp_size: int = 1,
                 placement_group=None,
                 env: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
                 start_timeout_s: float = 120.0, stage_layers: list[tuple[int, int]] | None = None):
        group = ParallelConfig(tp_size=tp_size, ep_size=ep_size).world_size  # validates the sizes
        stages = pipeline_stages(NemotronHConfig.from_file(config.model).num_layers, pp_size, stage_layers) \
            if pp_size > 1 else [None]
        world = group * pp_size
        if placement_group is not None and placement_group.bundle_count != world:
            raise ValueError(f"a placement group of {placement_group.bundle_count} bundles for {world} ranks "
                             f"(tp_size {tp_size}, ep_size {ep_size}, pp_size {pp_size})")
        envs = [dict(env or {})] * world if env is None or isinstance(env, Mapping) else [dict(e) for e in env]
        if len(envs) != world:
            raise ValueError(f"{len(envs)} rank environments for {world} ranks")
        self.config, self.world_size, self.group_size, self.pp_size = config, world, group, pp_size
        self._tickets = itertools.count()
        self._commits: tuple[list, list[int]] = ([], [])  # the last step's commit calls, gathered with the next
        gpu = config.device.startswith("cuda")
        self.group = placement_group or self._packed_group(world, rank_resources(config), start_timeout_s)
        self.workers = [self._worker(rank, gpu) for rank in range(world)]
        self.nodes = ray.get([w.node_ip.remote() for w in self.workers], timeout=start_timeout_s)
        # one rendezvous per stage, on the node of its first rank
        ports = ray.get([self.workers[s * group].free_port.remote() for s in range(pp_size)], timeout=start_timeout_s)
        try:
            started = []
            for rank, w in enumerate(self.workers):
                stage, in_stage = divmod(rank, group)
                parallel = ParallelConfig(in_stage if tp_size > 1 else 0, tp_size, in_stage if ep_size > 1 else 0,
                                          ep_size)
                init_method = f"tcp://{self.nodes[stage * group]}:{ports[stage]}"
                started.append(w.start.remote(asdict(config), parallel, stages[stage], in_stage, init_method,
                                              envs[rank], 1))
            infos = self._gather(started, timeout=start_timeout_s)
        except BaseException:
            self.shutdown()
            raise
        counts = {(i["num_kv_blocks"], i["block_size"], i["num_mamba_slots"]) for i in infos}
        if len(counts) != 1:
            self.shutdown()
            raise RuntimeError(f"the ranks allocated different caches: {infos}")
        self._cache_info = infos[0]

    @staticmethod
    def _packed_group(world: int, per_rank: dict[str, float], timeout_s: float):
        from ray.util.placement_group import placement_group, remove_placement_group

        group = placement_group([dict(per_rank) for _ in range(world)], strategy="PACK")
        try:
            ray.get(group.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(group)
            raise RuntimeError(f"the Ray cluster cannot hold {world} ranks of {per_rank} "
                               f"within {timeout_s:.0f} s; see `ray status`") from None
        return group

    def _worker(self, rank: int, gpu: bool):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(placement_group=self.group, placement_group_bundle_index=rank)
        resources = {"num_gpus": 1, "num_cpus": 0} if gpu else {"num_cpus": 1}
        # max_restarts=0: a restarted rank would have lost its shard of the cache and its place in the group.
        # max_concurrency: `check` gets an answer while a step runs, and a stage holds all pp micro-batches
        # of a step (each waits for its ticket); one caller, so steps never overlap.
        return RankWorker.options(scheduling_strategy=strategy, max_restarts=0, max_concurrency=self.pp_size + 1,
                                  **resources).remote()

    def _gather(self, refs: list, timeout: float | None = None, ranks: Sequence[int] | None = None) -> list:
        """Every rank's result, in rank order; the first rank to fail raises EngineWorkerError.

        Waits on all at once: a live rank blocked in a collective with a dead one must not
        hide the dead one's error. `ranks[i]` is the rank that refs[i] runs on (default: rank i).
        A dead rank is named as such even when a later stage's error, that it caused, comes first.
        """
        rank_of = {ref: rank for ref, rank in zip(refs, ranks or range(len(refs)))}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=timeout)
            if not ready:
                raise EngineWorkerError(rank_of[pending[0]], self._node(rank_of[pending[0]]),
                                        f"no answer within {timeout:.0f} s")
            rank = rank_of[ready[0]]
            try:
                ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
                dead = self._dead_rank(err, rank)
                if dead is not None:
                    raise EngineWorkerError(dead, self._node(dead),
                                            f"its worker process died ({_first_line(err)})") from err
                raise EngineWorkerError(rank, self._node(rank), _first_line(err)) from err
        return ray.get(refs)

    def _dead_rank(self, err: BaseException, rank: int) -> int | None:
        """The rank whose process died, when `err` (from `rank`'s call) is, or was caused by, one of ours dying."""
        cause = getattr(err, "cause", None) if isinstance(err, ray.exceptions.RayTaskError) else err
        if not isinstance(cause, ray.exceptions.RayActorError):
            return None
        ids = [w._actor_id.hex() for w in self.workers]
        if cause.actor_id in ids:
            return ids.index(cause.actor_id)
        return rank if cause is err else None  # its own actor died, whatever the error says of it

    def _node(self, rank: int) -> str:
        nodes = getattr(self, "nodes", None)
        return nodes[rank] if nodes else "(not placed yet)"

    def execute(self, step: SchedulerOutput) -> dict[str, StepResult]:
        if self.pp_size == 1:
            shared = ray.put(step)
            return self._gather([w.execute.remote(shared) for w in self.workers])[0]
        return self._pipelined(step)

    def _pipelined(self, step: SchedulerOutput) -> dict[str, StepResult]:
        """Every micro-batch through every stage, all in flight at once (see the module docstring)."""
        refs, ranks = list(self._commits[0]), list(self._commits[1])
        self._commits, last = ([], []), []
        for part in micro_batches(step, self.pp_size):
            shared, ticket, upstream = ray.put(part), next(self._tickets), None
            for stage in range(self.pp_size):
                first = stage * self.group_size
                outs = [self.workers[r].run_stage.remote(ticket, shared, upstream)
                        for r in range(first, first + self.group_size)]
                refs += outs
                ranks += range(first, first + self.group_size)
                upstream = [outs[0]]
            last.append(refs[-self.group_size])
        self._gather(refs, ranks=ranks)
        results: dict[str, StepResult] = {}
        for part in ray.get(last):
            results.update(part)
        if self.config.speculative_tokens:  # sent now, run before the next step's micro-batches (tickets)
            ticket, kept = next(self._tickets), {rid: len(r.tokens) for rid, r in results.items() if r.tokens}
            self._commits = ([w.commit_stage.remote(ticket, kept) for w in self.workers], list(range(self.world_size)))
        return results

    def cache_info(self) -> dict[str, int]:
        return dict(self._cache_info)

    def check(self, timeout: float = 5.0) -> None:
        """Raise EngineWorkerError unless every rank answers within `timeout` (also mid-step: see `_worker`)."""
        self._gather([w.node_ip.remote() for w in self.workers], timeout=timeout)

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Kill every rank and free their bundles; safe to call twice and after a failure.

        `ray.kill` only asks: a rank may still answer for a moment after it. Each rank is called
        until the call fails (at most `timeout_s` in all), so that when this returns the ranks are
        gone and their memory and ports free for whatever starts next.
        """
        from ray.util.placement_group import remove_placement_group

        workers = getattr(self, "workers", [])
        for worker in workers:
            ray.kill(worker, no_restart=True)
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            while time.monotonic() < deadline:
                try:
                    ray.get(worker.node_ip.remote(), timeout=max(deadline - time.monotonic(), 0.01))
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    break
                time.sleep(0.05)
        self.workers = []
        if getattr(self, "group", None) is not None:
            remove_placement_group(self.group)
            self.group = None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
