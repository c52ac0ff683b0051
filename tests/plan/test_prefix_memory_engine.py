"""The plan's Mamba checkpoint memory is what the engine really allocates for it: the tiny model's
checkpoint tensors, on one process, on each rank of a tp 2 group and on each stage of pp 2, byte for byte."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from nemodeploy.backends.engine_config import engine_config, model_dir  # noqa: E402
from nemodeploy.plan.compiler import compile_plan  # noqa: E402
from nemodeploy.topology.loader import load  # noqa: E402
from nemodeploy.topology.schema import Topology  # noqa: E402


def cached(cpus: int = 1, parallel: dict | None = None, precision: str = "fp32", **serving) -> Topology:
    data = load("local").model_dump()
    data["model"]["precision"] = precision
    data["serving"].update(prefix_caching=True, mamba_checkpoint_interval=64, **serving)
    data["nodes"][0]["accelerators"]["count"] = cpus
    data["engine"]["parallel"].update(parallel or {})
    return Topology.model_validate(data)


def checkpoint_tensor_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for t in [*cache.ckpt_conv.values(), *cache.ckpt_ssm.values()])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # the conv window is in the model dtype
def test_the_engine_allocates_what_the_plan_counts(precision):
    from nemodeploy.engine.core import LLMEngine

    topology = cached(concurrency=5, precision=precision)
    plan = compile_plan(topology)
    engine = LLMEngine(engine_config(topology, plan))
    runner = engine.executor.runner
    assert engine.config.num_mamba_checkpoints == plan.cache.num_mamba_checkpoints == 10
    assert checkpoint_tensor_bytes(runner.cache) == plan.memory.mamba_checkpoints > 0
    assert engine.stats().mamba_checkpoint_bytes == plan.memory.mamba_checkpoints
    assert engine.stats().mamba_checkpoints_total == 10


def test_each_tp_rank_allocates_its_share_as_planned():
    from nemodeploy.engine.cache import HybridCache
    from nemodeploy.engine.model.parallel import ParallelConfig
    from nemodeploy.models.config import NemotronHConfig

    topology = cached(cpus=2, parallel={"tp_size": 2}, mamba_checkpoints=7)
    plan = compile_plan(topology)
    assert plan.parallel.tp_size == 2
    config = NemotronHConfig.from_dict(json.loads((model_dir(topology) / "config.json").read_text()))
    for rank in range(2):
        cache = HybridCache(config, 1, plan.cache.block_size, 1, torch.float32,
                            parallel=ParallelConfig(tp_rank=rank, tp_size=2), num_checkpoints=7)
        assert checkpoint_tensor_bytes(cache) == plan.memory.mamba_checkpoints


def test_each_pipeline_stage_allocates_for_its_own_mamba_layers():
    from nemodeploy.engine.cache import HybridCache
    from nemodeploy.models.config import NemotronHConfig

    topology = cached(cpus=2, parallel={"pp_size": 2}, mamba_checkpoints=7)
    plan = compile_plan(topology)
    assert plan.parallel.pp_size == 2
    config = NemotronHConfig.from_dict(json.loads((model_dir(topology) / "config.json").read_text()))
    per_stage = [checkpoint_tensor_bytes(HybridCache(config, 1, plan.cache.block_size, 1, torch.float32,
                                                     num_checkpoints=7, layers=range(*stage.layers)))
                 for stage in plan.stages]
    per_layer = plan.memory.mamba_checkpoints // max(s.mamba_layers for s in plan.stages)
    assert per_stage == [stage.mamba_layers * per_layer for stage in plan.stages]
    assert max(per_stage) == plan.memory.mamba_checkpoints  # the plan shows the heaviest stage
