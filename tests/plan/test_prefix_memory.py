"""Hybrid prefix caching in the plan: the embedded engine's Mamba state checkpoints are counted per GPU
(num_mamba_checkpoints x the Mamba state of that GPU's layers), exactly what the engine allocates,
before the KV cache and the slots are sized; shown in --json and the memory table."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nemodeploy.cli import main
from nemodeploy.plan.compiler import compile_plan
from nemodeploy.topology.loader import load
from nemodeploy.topology.schema import Topology


def variant(profile: str, engine: dict | None = None, accelerators: dict | None = None, **serving) -> Topology:
    data = load(profile).model_dump()
    data["serving"].update(serving)
    data["engine"].update(engine or {})
    if accelerators:
        for node in data["nodes"]:
            node["accelerators"].update(accelerators)
    return Topology.model_validate(data)


def test_checkpoints_are_counted_per_gpu_and_come_off_the_caches():
    off = compile_plan(variant("gb200-4x-nvfp4", engine={"kind": "embedded"}, concurrency=8, max_context=131072))
    on = compile_plan(variant("gb200-4x-nvfp4", engine={"kind": "embedded"}, concurrency=8, max_context=131072,
                              prefix_caching=True, mamba_checkpoints=300))
    per_seq = on.capacity.mamba_state_bytes_per_sequence_per_rank
    assert per_seq > 0 and on.cache.num_mamba_checkpoints == 300
    assert on.memory.mamba_checkpoints == 300 * per_seq
    assert off.memory.mamba_checkpoints == 0 and off.cache.num_mamba_checkpoints == 0 and not off.cache.prefix_caching
    m = on.memory
    assert m.weights + m.activations + m.cuda_graphs + m.kv_cache + m.mamba_state + m.mamba_checkpoints + m.free \
        == m.usable
    # the checkpoints take room the caches had: fewer sequences of the target context fit
    assert on.capacity.sequences_at_target_context < off.capacity.sequences_at_target_context
    assert on.cache.prefix_caching and on.cache.mamba_checkpoint_interval == 256


def test_the_default_is_two_checkpoints_per_sequence_of_a_replica():
    plan = compile_plan(variant("local", concurrency=12, prefix_caching=True, mamba_checkpoint_interval=64))
    assert plan.cache.num_mamba_checkpoints == 24 and plan.cache.mamba_checkpoint_interval == 64
    assert plan.memory.mamba_checkpoints == 24 * plan.capacity.mamba_state_bytes_per_sequence_per_rank


def test_the_default_follows_each_replicas_share_of_the_concurrency():
    plan = compile_plan(variant("local", accelerators={"count": 2}, concurrency=11, prefix_caching=True))
    replicas = plan.parallel.dp_size
    assert plan.cache.num_mamba_checkpoints == 2 * -(-11 // replicas)


def test_checkpoints_that_leave_no_room_make_the_plan_infeasible():
    plan = compile_plan(variant("local", prefix_caching=True, mamba_checkpoints=1_000_000,
                                engine={"memory_utilization": 0.2}, accelerators={"kind": "cpu"}))
    per_seq = plan.capacity.mamba_state_bytes_per_sequence_per_rank
    if plan.memory.usable - plan.memory.weights - plan.memory.activations > 1_000_000 * per_seq:
        pytest.skip("this machine's memory holds a million tiny-model checkpoints")
    assert plan.verdict == "infeasible" and plan.cache is None and plan.memory.free < 0
    assert "of Mamba prefix-cache checkpoints" in plan.reason


def test_vllm_keeps_its_prefix_states_in_the_kv_pool_and_is_on_by_default_where_safe():
    default = compile_plan(load("gb200-4x-nvfp4"))
    assert default.engine == "vllm" and default.memory.mamba_checkpoints == 0
    mtp = default.cache.speculative_tokens > 0
    assert default.cache.prefix_caching is not mtp, "off by default only with MTP on a hybrid model (vllm 39809)"
    no_mtp = compile_plan(variant("gb200-4x-nvfp4", speculative_tokens=0))
    assert no_mtp.cache.prefix_caching and no_mtp.cache.num_mamba_checkpoints == 0
    assert not compile_plan(variant("gb200-4x-nvfp4", speculative_tokens=0, prefix_caching=False)).cache.prefix_caching
    sized = compile_plan(variant("gb200-4x-nvfp4", speculative_tokens=0, mamba_checkpoints=8))
    assert sized.cache.num_mamba_checkpoints == 0
    assert any("serving.mamba_checkpoints sizes the embedded engine's prefix cache" in w for w in sized.warnings)
    assert not any("mamba_checkpoints" in w for w in no_mtp.warnings)


def test_plan_json_and_the_memory_table_show_the_checkpoints(tmp_path):
    topology = variant("local", prefix_caching=True, mamba_checkpoints=40, mamba_checkpoint_interval=128)
    path = tmp_path / "cached.yaml"
    path.write_text(topology.model_dump_json())
    result = CliRunner().invoke(main, ["plan", str(path), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["cache"]["prefix_caching"] is True and plan["cache"]["num_mamba_checkpoints"] == 40
    assert plan["cache"]["mamba_checkpoint_interval"] == 128
    assert plan["memory"]["mamba_checkpoints"] == 40 * plan["capacity"]["mamba_state_bytes_per_sequence_per_rank"]
    text = CliRunner().invoke(main, ["plan", str(path)], terminal_width=200).stdout
    assert "Mamba checkpoints" in text and "40 Mamba checkpoints, one every 128 tokens" in text


@pytest.mark.parametrize("interval", [100, 8])
def test_an_interval_off_the_kv_block_is_one_located_line(tmp_path, interval):
    data = load("local").model_dump(mode="json")
    data["serving"].update(prefix_caching=True, mamba_checkpoint_interval=interval)
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["plan", str(path)])
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "mamba_checkpoint_interval" in line
