"""RayExecutor: the embedded engine across workers, one Ray actor per rank.

The ranks are the bundles of one placement group (pinned to the plan's nodes when their
IPs are given) and form torch.distributed's default group: gloo on CPU, NCCL on GPU,
rendezvous over TCP at a free port on rank 0's node. Every step the same
`SchedulerOutput` (put in the object store once) goes to every rank's ModelRunner; the
ranks meet in the model's all-reduces and all sample the same tokens (see executor.py),
so rank 0's results are the step's.

A rank that dies (its process, its node) makes `execute` raise `EngineWorkerError`
naming the rank and its node. The surviving ranks are then stuck in a collective that
will never complete: the executor is done for, and `shutdown` kills them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import timedelta

import ray

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.executor import Executor, ExecutorDead, StepResult
from nemodeploy.engine.model.parallel import ParallelConfig
from nemodeploy.engine.scheduler import SchedulerOutput
from nemodeploy.net import free_port

NO_PIPELINE = "pipeline parallel is not implemented in the embedded engine; use tp/ep or the vllm engine"

# A collective that waits this long means a peer is gone; gloo / NCCL then raise instead of hanging forever.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


class EngineWorkerError(ExecutorDead):
    """A rank of the engine failed or is unreachable; the message names the rank and its node."""

    def __init__(self, rank: int, node: str, detail: str):
        super().__init__(f"engine rank {rank} on node {node} failed: {detail}")
        self.rank, self.node = rank, node


@ray.remote
class RankWorker:
    """One rank: a process of the torch.distributed group and a ModelRunner over its shard."""

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        return free_port(self.node_ip())

    def start(self, config: dict, parallel: ParallelConfig, rank: int, init_method: str, env: Mapping[str, str],
              num_threads: int) -> dict[str, int]:
        import torch
        import torch.distributed as dist

        from nemodeploy.engine.model_runner import ModelRunner

        os.environ.update(env)
        torch.set_num_threads(num_threads)
        engine_config = EngineConfig(**config)
        backend = "nccl" if engine_config.device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=parallel.world_size,
                                timeout=COLLECTIVE_TIMEOUT)
        self.runner = ModelRunner(engine_config, parallel)
        return self.runner.cache_info()

    def execute(self, step: SchedulerOutput) -> dict[str, StepResult]:
        return self.runner.execute(step)


def rank_resources(config: EngineConfig) -> dict[str, float]:
    """What one rank's bundle holds: a GPU for a CUDA engine, a CPU otherwise."""
    return {"GPU": 1} if config.device.startswith("cuda") else {"CPU": 1}


class RayExecutor(Executor):
    """`world_size = max(tp_size, ep_size)` ranks on a Ray cluster this process is connected to (`ray.init`).

    `placement_group` (ready, bundle i for rank i, e.g. pinned to a plan's nodes by the
    caller) decides where the ranks run, and the executor owns it from then on (`shutdown`
    removes it); without one the ranks are packed wherever the cluster has room. `env` is set in every
    rank before the process group starts (e.g. GLOO_SOCKET_IFNAME), one mapping for all
    ranks or one per rank; without it the ranks keep the environment their raylet gave them.
    """

    def __init__(self, config: EngineConfig, tp_size: int = 1, ep_size: int = 1, pp_size: int = 1,
                 placement_group=None,
                 env: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
                 start_timeout_s: float = 120.0):
        if pp_size > 1:
            raise ValueError(NO_PIPELINE)
        world = ParallelConfig(tp_size=tp_size, ep_size=ep_size).world_size  # validates the sizes
        if placement_group is not None and placement_group.bundle_count != world:
            raise ValueError(f"a placement group of {placement_group.bundle_count} bundles for {world} ranks "
                             f"(tp_size {tp_size}, ep_size {ep_size})")
        envs = [dict(env or {})] * world if env is None or isinstance(env, Mapping) else [dict(e) for e in env]
        if len(envs) != world:
            raise ValueError(f"{len(envs)} rank environments for {world} ranks")
        self.config, self.world_size = config, world
        gpu = config.device.startswith("cuda")
        self.group = placement_group or self._packed_group(world, rank_resources(config), start_timeout_s)
        self.workers = [self._worker(rank, gpu) for rank in range(world)]
        self.nodes = ray.get([w.node_ip.remote() for w in self.workers], timeout=start_timeout_s)
        port = ray.get(self.workers[0].free_port.remote(), timeout=start_timeout_s)
        init_method = f"tcp://{self.nodes[0]}:{port}"
        try:
            started = [
                w.start.remote(asdict(config), ParallelConfig(rank if tp_size > 1 else 0, tp_size,
                                                              rank if ep_size > 1 else 0, ep_size),
                               rank, init_method, envs[rank], 1)
                for rank, w in enumerate(self.workers)
            ]
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
        # max_concurrency=2: `check_ranks` gets an answer while a step runs; steps never overlap (one caller).
        return RankWorker.options(scheduling_strategy=strategy, max_restarts=0, max_concurrency=2,
                                  **resources).remote()

    def _gather(self, refs: list, timeout: float | None = None) -> list:
        """Every rank's result, in rank order; the first rank to fail raises EngineWorkerError.

        Waits on all at once: a live rank blocked in a collective with a dead one must not
        hide the dead one's error.
        """
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=timeout)
            if not ready:
                raise EngineWorkerError(rank_of[pending[0]], self._node(rank_of[pending[0]]),
                                        f"no answer within {timeout:.0f} s")
            rank = rank_of[ready[0]]
            try:
                ray.get(ready[0])
            except ray.exceptions.RayActorError as err:
                raise EngineWorkerError(rank, self._node(rank), f"its worker process died ({_first_line(err)})") from err
            except ray.exceptions.RayTaskError as err:
                raise EngineWorkerError(rank, self._node(rank), _first_line(err)) from err
        return ray.get(refs)

    def _node(self, rank: int) -> str:
        nodes = getattr(self, "nodes", None)
        return nodes[rank] if nodes else "(not placed yet)"

    def execute(self, step: SchedulerOutput) -> dict[str, StepResult]:
        shared = ray.put(step)
        return self._gather([w.execute.remote(shared) for w in self.workers])[0]

    def cache_info(self) -> dict[str, int]:
        return dict(self._cache_info)

    def check_ranks(self, timeout: float = 5.0) -> None:
        """Raise EngineWorkerError unless every rank answers within `timeout` (also mid-step: see `_worker`)."""
        self._gather([w.node_ip.remote() for w in self.workers], timeout=timeout)

    def shutdown(self) -> None:
        """Kill every rank and free their bundles; safe to call twice and after a failure."""
        from ray.util.placement_group import remove_placement_group

        for worker in getattr(self, "workers", []):
            ray.kill(worker, no_restart=True)
        self.workers = []
        if getattr(self, "group", None) is not None:
            remove_placement_group(self.group)
            self.group = None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
