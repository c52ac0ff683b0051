"""Pipeline stages of the model (no Ray): each stage holds its layers' weights and caches only, the
stage split follows the plan's bounds or splits evenly, and a step cuts into micro-batches of whole
sequences. Across Ray workers, with greedy tokens equal to one process: test_pp_executor.py."""

from __future__ import annotations

import pytest

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.model_runner import ModelRunner
from nemodeploy.engine.pipeline import micro_batches, pipeline_stages
from nemodeploy.engine.protocol import SamplingParams
from nemodeploy.engine.scheduler import SchedulerOutput, SeqChunk
from nemodeploy.engine.tiny import tiny_model_dir
from nemodeploy.models.config import ATTENTION, MAMBA, NemotronHConfig


def test_a_stage_holds_only_its_layers_weights_and_cache():
    model = NemotronHConfig.from_file(tiny_model_dir())
    first, last = pipeline_stages(model.num_layers, 2, [(0, 3), (3, model.num_layers)])
    config = EngineConfig(model=str(tiny_model_dir()), num_kv_blocks=8)
    runners = [ModelRunner(config, stage=first), ModelRunner(config, stage=last)]
    whole = ModelRunner(config)
    for runner, stage in zip(runners, (first, last)):
        layers = {name.split(".")[2] for name, _ in runner.model.named_parameters() if name.startswith("backbone.layers.")}
        assert layers == {str(i) for i in stage.layers}
        own = [f"backbone.layers.{i}" for i in stage.layers]
        assert set(runner.cache.kv) == {k for k in own if model.layer_types[int(k.split(".")[-1])] == ATTENTION}
        assert set(runner.cache.conv) == {k for k in own if model.layer_types[int(k.split(".")[-1])] == MAMBA}
    names = [{n for n, _ in r.model.named_parameters()} for r in runners]
    assert "backbone.embeddings.weight" in names[0] and "backbone.embeddings.weight" not in names[1]
    assert "lm_head.weight" in names[1] and "lm_head.weight" not in names[0]
    assert names[0] | names[1] == {n for n, _ in whole.model.named_parameters()}  # nothing lost, nothing twice
    assert not names[0] & names[1]
    info = [r.cache_info() for r in runners]
    assert sum(i["kv_bytes"] for i in info) == whole.cache_info()["kv_bytes"]
    assert sum(i["mamba_bytes"] for i in info) == whole.cache_info()["mamba_bytes"]


def test_stages_follow_the_given_split_or_split_evenly():
    assert [(s.start, s.end) for s in pipeline_stages(7, 3)] == [(0, 3), (3, 5), (5, 7)]
    assert [(s.start, s.end) for s in pipeline_stages(7, 2, [[0, 5], [5, 7]])] == [(0, 5), (5, 7)]
    for bad in ([(0, 3), (4, 7)], [(0, 3)], [(0, 3), (3, 6)]):
        with pytest.raises(ValueError, match="do not split the model's 7 layers into 2 contiguous stages"):
            pipeline_stages(7, 2, bad)
    with pytest.raises(ValueError, match="pp_size 8 must be between 1 and the model's 7 layers"):
        pipeline_stages(7, 8)


def _chunk(request_id: str, tokens: int) -> SeqChunk:
    return SeqChunk(request_id, list(range(tokens)), 0, [0], 0, 0, True, None, 16, SamplingParams(), 0)


def test_a_step_cuts_into_micro_batches_of_whole_sequences_with_even_tokens():
    step = SchedulerOutput([_chunk(str(i), n) for i, n in enumerate([1, 1, 1, 1, 1, 1])], released=["gone"])
    parts = micro_batches(step, 2)
    assert [[c.request_id for c in p.chunks] for p in parts] == [["0", "1", "2"], ["3", "4", "5"]]
    assert [p.released for p in parts] == [["gone"], []]
    uneven = micro_batches(SchedulerOutput([_chunk("prefill", 30), _chunk("a", 1), _chunk("b", 1)]), 2)
    assert [[c.request_id for c in p.chunks] for p in uneven] == [["prefill"], ["a", "b"]]
    assert len(micro_batches(SchedulerOutput([_chunk("one", 1)]), 4)) == 1  # never an empty micro-batch
    assert [p.released for p in micro_batches(SchedulerOutput(released=["x"]), 2)] == [["x"]]
