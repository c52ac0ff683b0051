"""Every profile compiles, and each verdict matches the scenario arithmetic of shared/reference/nemotron3-ultra.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nemodeploy.cli import main
from nemodeploy.plan.compiler import compile_plan
from nemodeploy.topology.loader import load, profile_names

TB = 1e12


def plan_of(name: str):
    return compile_plan(load(name))


@pytest.mark.parametrize("name", profile_names())
def test_every_profile_compiles_to_a_consistent_plan(name):
    plan = plan_of(name)
    assert plan.topology == name
    if plan.verdict == "infeasible":
        assert plan.cache is None and plan.alternatives, "an infeasible plan says what would fit"
        return
    mem = plan.memory
    parts = mem.weights + mem.activations + mem.cuda_graphs + mem.kv_cache + mem.mamba_state
    assert parts + mem.free == mem.usable and mem.free >= 0
    assert mem.usable + mem.runtime_reserve == mem.capacity
    p = plan.parallel
    assert p.tp_size * p.pp_size * p.dp_size == p.world_size == plan.accelerator_count == len(plan.ranks)
    assert sorted({(r.node, r.device) for r in plan.ranks}) == sorted((r.node, r.device) for r in plan.ranks)
    assert plan.cache.num_mamba_slots == plan.cache.max_num_seqs >= 1
    assert plan.cache.num_kv_blocks * plan.cache.block_size >= plan.cache.max_num_seqs * plan.cache.max_model_len
    assert plan.estimate.decode_tokens_per_s_per_sequence > 0 and plan.estimate.assumptions


def test_gb200_nvfp4_runs_fp4_natively_with_the_weights_on_four_gpus():
    plan = plan_of("gb200-4x-nvfp4")
    assert plan.verdict == "fits"
    assert plan.precision.compute.startswith("nvfp4 (native")
    assert 0.35 * TB < plan.model.weight_bytes < 0.353 * TB, "the published 352.3 GB checkpoint, MTP included"
    assert plan.parallel.tp_size * plan.parallel.pp_size <= 4


def test_b200_bf16_fits_in_one_node():
    plan = plan_of("b200-8x-bf16")
    assert plan.verdict == "fits"
    assert 1.09 * TB < plan.model.weight_bytes - 0 < 1.13 * TB  # MTP loaded for 5 speculative tokens
    assert plan.model.mtp_loaded and plan.cache.speculative_tokens == 5
    assert plan.node_count == 1


def test_h100_bf16_does_not_fit_and_names_nvfp4_and_sixteen_gpus():
    result = CliRunner().invoke(main, ["plan", "h100-8x-bf16", "--json"])
    assert result.exit_code == 1
    plan = json.loads(result.stdout)
    assert plan["verdict"] == "infeasible"
    assert "1.10 TB of bf16 weights do not fit" in plan["reason"]
    changes = [a["change"] for a in plan["alternatives"]]
    assert any("NVFP4" in c and "w4a16" in c for c in changes), changes
    assert any("16 GPUs" in c for c in changes), changes


def test_h100_nvfp4_runs_as_w4a16_on_hopper():
    plan = plan_of("h100-8x-nvfp4")
    assert plan.verdict == "fits"
    assert plan.precision.compute.startswith("w4a16")
    assert plan.estimate and plan.estimate.decode_bound in ("memory", "communication")


def test_sixteen_h100_and_eight_h200_hold_bf16_with_little_room():
    for name in ("h100-16x-bf16", "h200-8x-bf16"):
        plan = plan_of(name)
        assert plan.verdict in ("fits", "tight"), plan.reason
        mem = plan.memory
        assert mem.weights > 0.85 * mem.usable, f"{name}: BF16 Ultra leaves little room on Hopper"
    assert plan_of("h100-16x-bf16").parallel.pp_size == 2, "tp stays inside a node; the second node is a stage"


def test_dgx_spark_two_nodes_cannot_hold_nvfp4_four_can():
    two = plan_of("spark-2x")
    assert two.verdict == "infeasible"
    assert any("nodes" in a.change for a in two.alternatives)
    assert plan_of("spark-4x").verdict == "fits"
    three = plan_of("spark-3x")
    mem = three.memory
    assert three.verdict == "infeasible", "3 nodes: 110 GB of weights per node on 111 GB usable (0.85 of 121.7 GiB)"
    assert mem.usable - 5e9 < mem.weights + mem.activations + mem.cuda_graphs, "they miss by a few GB"


def test_mi300x_serves_bf16_but_has_no_fp4_path():
    assert plan_of("mi300x-8x-bf16").verdict == "fits"
    nvfp4 = load("mi300x-8x-bf16")
    nvfp4 = nvfp4.model_copy(update={"model": nvfp4.model.model_copy(update={"precision": "nvfp4"})})
    plan = compile_plan(nvfp4)
    assert plan.verdict == "infeasible" and "no NVFP4 path" in plan.reason
    assert [a.precision for a in plan.alternatives if a.verdict != "infeasible"][:1] == ["fp8"]


def test_kv_heads_are_replicated_when_tp_exceeds_them():
    topology = load("h100-8x-nvfp4")
    tp8 = topology.model_copy(update={"engine": topology.engine.model_copy(
        update={"parallel": topology.engine.parallel.model_copy(update={"tp_size": 8})})})
    plan = compile_plan(tp8)
    assert plan.parallel.tp_size == 8
    assert plan.parallel.kv_heads_per_rank == 1 and plan.parallel.kv_head_replication == 4
    assert any("KV head" in w for w in plan.warnings)
    # 12 layers x K,V x 1 head x 128 x fp8
    assert plan.capacity.kv_bytes_per_token_per_rank == 12 * 2 * 1 * 128 * 1


def test_the_local_profile_runs_the_tiny_model_on_this_cpu():
    plan = plan_of("local")
    assert plan.verdict == "fits" and plan.engine == "embedded"
    assert plan.accelerator == "cpu" and plan.memory.cuda_graphs == 0
    assert plan.cache.max_num_seqs == 16 and plan.cache.max_model_len == 4096


def test_plan_json_is_the_documented_structure():
    result = CliRunner().invoke(main, ["plan", "gb200-4x-nvfp4", "--json"])
    assert result.exit_code == 0
    plan = json.loads(result.stdout)
    assert plan["schema_version"] == 1
    assert set(plan) == {
        "schema_version", "topology", "accelerator", "accelerator_count", "node_count", "engine", "verdict", "reason",
        "model", "precision", "parallel", "stages", "ranks", "memory", "capacity", "cache", "estimate", "warnings",
        "alternatives", "cost",
    }
    documented = (Path(__file__).resolve().parents[2] / "docs" / "plan-json.md").read_text()
    for section in ("model", "precision", "parallel", "stages", "ranks", "memory", "capacity", "cache", "estimate"):
        for field in plan[section][0] if isinstance(plan[section], list) else plan[section]:
            assert f"`{field}`" in documented, f"{section}.{field} is not documented in docs/plan-json.md"


def test_topologies_lists_every_profile_with_a_verdict():
    result = CliRunner().invoke(main, ["topologies", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == profile_names()
    assert {r["verdict"] for r in rows} <= {"fits", "tight", "infeasible"}


def test_schema_is_json_schema_with_the_topology_fields():
    result = CliRunner().invoke(main, ["schema"])
    schema = json.loads(result.stdout)
    assert schema["title"] == "Topology"
    assert {"name", "nodes", "model", "engine", "serving", "interconnect"} <= set(schema["properties"])
