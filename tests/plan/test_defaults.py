"""Honest defaults and knobs: memory share per accelerator, Mamba state dtype, native context, MTU, verdict text."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nemodeploy.cli import main
from nemodeploy.plan.compiler import PlanInputError, compile_plan
from nemodeploy.plan.types import human_bytes
from nemodeploy.topology.loader import load
from nemodeploy.topology.schema import Topology


def variant(profile: str, engine: dict | None = None, nodes: list | None = None, **serving) -> Topology:
    data = load(profile).model_dump()
    data["serving"].update(serving)
    data["engine"].update(engine or {})
    if nodes is not None:
        data["nodes"] = nodes
    return Topology.model_validate(data)


def test_dgx_spark_budgets_0_85_of_what_cuda_reports():
    mem = compile_plan(load("spark-4x")).memory
    assert mem.utilization == 0.85 and round(mem.capacity / 2**30, 2) == 121.69
    assert compile_plan(load("gb200-4x-nvfp4")).memory.utilization == 0.90
    assert compile_plan(variant("spark-4x", engine={"memory_utilization": 0.8})).memory.utilization == 0.8


@pytest.mark.parametrize("dtype,ratio", [("bfloat16", 0.5), ("float16", 0.5), ("float32", 1.0)])
def test_the_mamba_state_dtype_is_counted_in_the_state(dtype, ratio):
    auto = compile_plan(load("gb200-4x-nvfp4"))
    chosen = compile_plan(variant("gb200-4x-nvfp4", mamba_ssm_cache_dtype=dtype))
    assert auto.precision.mamba_ssm_dtype == "float32", "Ultra's config keeps the SSM state in float32"
    assert chosen.precision.mamba_ssm_dtype == dtype
    # the conv window stays in the activation dtype; the SSM state (99% of it) follows the knob
    assert chosen.model.mamba_state_bytes_per_sequence == pytest.approx(
        auto.model.mamba_state_bytes_per_sequence * ratio, rel=0.02)


def test_a_context_above_the_native_one_needs_the_explicit_opt_in():
    with pytest.raises(PlanInputError) as err:
        compile_plan(variant("gb200-4x-nvfp4", max_context=1_048_576))
    assert err.value.field == ("serving", "max_context") and "262,144" in str(err.value)
    plan = compile_plan(variant("gb200-4x-nvfp4", max_context=1_048_576, allow_long_context=True, concurrency=2))
    assert plan.cache.long_context and plan.cache.max_model_len == 1_048_576
    assert any("VLLM_ALLOW_LONG_MAX_MODEL_LEN" in w for w in plan.warnings)
    assert not compile_plan(load("gb200-4x-nvfp4")).cache.long_context


def test_the_cli_refuses_a_long_context_without_opt_in_in_one_located_line(tmp_path):
    text = (load("gb200-4x-nvfp4").model_dump_json())
    data = json.loads(text)
    data["serving"]["max_context"] = 524288
    data["engine"]["memory_utilization"] = None
    path = tmp_path / "long.yaml"
    import yaml
    path.write_text(yaml.safe_dump({k: v for k, v in data.items()}))
    result = CliRunner().invoke(main, ["plan", str(path)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "allow_long_context" in result.stderr


def _two_nodes(nic: dict, inter_node: str) -> Topology:
    nodes = [{"name": f"n{i}", "address": f"192.0.2.{i + 1}", "accelerators": {"kind": "h100-sxm", "count": 8},
              "nics": [nic]} for i in range(2)]
    data = load("h100-16x-bf16").model_dump()
    data["nodes"], data["interconnect"] = nodes, {"inter_node": inter_node}
    return Topology.model_validate(data)


def test_infiniband_at_4096_mtu_is_not_a_roce_warning():
    ib = compile_plan(_two_nodes({"name": "ibp0s0", "mtu": 4096, "speed_gbps": 400, "rdma": True}, "ib-ndr-400g-x8"))
    assert not any("MTU" in w for w in ib.warnings)
    roce = compile_plan(_two_nodes({"name": "enp1s0", "mtu": 1500, "speed_gbps": 400, "rdma": True}, "roce-400g"))
    assert any("RoCE NIC at MTU 1500" in w for w in roce.warnings)


@pytest.mark.parametrize("name", ["gb200-4x-nvfp4", "h100-16x-bf16", "spark-3x", "h100-8x-bf16"])
def test_the_verdict_text_adds_what_the_memory_bar_shows(name):
    plan = compile_plan(load(name))
    mem = plan.memory
    for label, part in (("weights", mem.weights), ("activations", mem.activations), ("CUDA graphs", mem.cuda_graphs)):
        assert f"{human_bytes(part)} of {label}" in plan.reason, (label, plan.reason)
    assert f"{human_bytes(mem.usable)} usable" in plan.reason


def test_an_infeasible_plan_has_the_fields_plan_json_md_promises():
    plan = compile_plan(load("h100-8x-bf16"))
    assert plan.verdict == "infeasible" and plan.cache is None and plan.estimate is None
    assert plan.memory is not None and plan.parallel is not None, "the closest layout, field by field"
    data = load("mi300x-8x-bf16").model_dump()
    data["model"]["precision"] = "nvfp4"
    no_path = compile_plan(Topology.model_validate(data))
    assert no_path.parallel is None and no_path.memory is None and no_path.stages == [] and no_path.ranks == []
