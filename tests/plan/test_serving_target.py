"""Layouts a user would pick: ranked by the serving target, totals bounded by the concurrency given."""

from __future__ import annotations

import pytest

from nemodeploy.plan.compiler import compile_plan
from nemodeploy.topology.loader import load, profile_names
from nemodeploy.topology.schema import Topology


def variant(profile: str, *, kind: str | None = None, count: int | None = None, unpin: bool = True,
            **serving) -> Topology:
    data = load(profile).model_dump()
    if kind:
        data["nodes"][0]["accelerators"] = {"kind": kind, "count": count}
    if unpin:
        data["engine"]["parallel"] = {}
    data["serving"].update(serving)
    return Topology.model_validate(data)


@pytest.mark.parametrize("kind,count", [("gb200", 4), ("b200", 8)])
def test_one_user_on_blackwell_nvfp4_gets_a_tensor_parallel_layout(kind, count):
    plan = compile_plan(variant("gb200-4x-nvfp4", kind=kind, count=count, concurrency=1))
    p, e = plan.parallel, plan.estimate
    assert (p.tp_size, p.dp_size) == (count, 1), "one user is served fastest by one replica over every GPU"
    assert e.sequences_in_flight == 1
    assert e.decode_tokens_per_s_total == pytest.approx(e.decode_tokens_per_s_per_sequence)
    data = variant("gb200-4x-nvfp4", kind=kind, count=count, concurrency=1).model_dump()
    data["engine"]["parallel"] = {"dp_size": count}
    dp = compile_plan(Topology.model_validate(data))
    assert e.decode_tokens_per_s_per_sequence > 1.5 * dp.estimate.decode_tokens_per_s_per_sequence


@pytest.mark.parametrize("name", [n for n in profile_names() if n != "local"])
@pytest.mark.parametrize("concurrency", [1, 3, 64])
def test_total_throughput_never_exceeds_what_the_concurrency_draws(name, concurrency):
    plan = compile_plan(variant(name, unpin=False, concurrency=concurrency), with_alternatives=False)
    if plan.estimate is None:
        return
    e = plan.estimate
    assert e.sequences_in_flight <= concurrency
    assert e.decode_tokens_per_s_total <= concurrency * e.decode_tokens_per_s_per_sequence * (1 + 1e-9)
    assert e.generated_tokens_per_s_total <= e.decode_tokens_per_s_total


def test_a_latency_target_picks_the_layout_that_meets_it():
    free = compile_plan(variant("gb200-4x-nvfp4", kind="b200", count=8, concurrency=64))
    target = free.estimate.decode_tokens_per_s_per_sequence * 1.05
    fast = compile_plan(variant("gb200-4x-nvfp4", kind="b200", count=8, concurrency=64,
                                min_tokens_per_s_per_user=target))
    if fast.estimate.decode_tokens_per_s_per_sequence >= target:
        assert fast.parallel != free.parallel
    else:
        assert any("per user" in w for w in fast.warnings)
    unreachable = compile_plan(variant("gb200-4x-nvfp4", concurrency=16, min_tokens_per_s_per_user=10_000))
    assert any("no layout reaches 10000 tok/s per user" in w for w in unreachable.warnings)


def test_decode_runs_at_the_workload_context_not_max_context():
    short = compile_plan(variant("gb200-4x-nvfp4", max_context=32768, input_tokens=2048, output_tokens=512))
    long = compile_plan(variant("gb200-4x-nvfp4", max_context=262144, input_tokens=2048, output_tokens=512))
    assert short.estimate.decode_context == long.estimate.decode_context == 2048 + 256
    assert long.estimate.decode_tokens_per_s_per_sequence == pytest.approx(
        short.estimate.decode_tokens_per_s_per_sequence, rel=0.05)
    longer = compile_plan(variant("gb200-4x-nvfp4", max_context=262144, input_tokens=200_000, output_tokens=512))
    assert longer.estimate.decode_tokens_per_s_per_sequence < long.estimate.decode_tokens_per_s_per_sequence


def test_prefill_of_other_requests_slows_each_user_and_shows_in_ttft():
    chat = compile_plan(variant("gb200-4x-nvfp4", concurrency=16, input_tokens=8192, output_tokens=1024))
    decode_only = compile_plan(variant("gb200-4x-nvfp4", concurrency=16, input_tokens=64, output_tokens=1024))
    assert chat.estimate.prefill_share > decode_only.estimate.prefill_share
    assert chat.estimate.ttft_s > decode_only.estimate.ttft_s


def test_a_shape_without_a_tuned_moe_kernel_is_warned_about():
    plan = compile_plan(load("h200-8x-bf16"))
    assert not plan.estimate.moe_kernel_tuned and plan.estimate.decode_bound == "kernel"
    assert any("no tuned MoE kernel" in w for w in plan.warnings)
    assert compile_plan(load("gb200-4x-nvfp4")).estimate.moe_kernel_tuned
