"""Property: whatever topology a user writes, the compiler answers with a plan or a located input error.

It never crashes, and a plan it returns is internally consistent.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nemodeploy.models.specs import SPECS
from nemodeploy.plan.compiler import PlanInputError, compile_plan
from nemodeploy.topology.catalog import ACCELERATORS, NETWORKS
from nemodeploy.topology.schema import Topology

small_powers = st.sampled_from([1, 2, 3, 4, 6, 8, 16])


@st.composite
def topologies(draw) -> Topology:
    kind = draw(st.sampled_from(sorted(ACCELERATORS)))
    per_node = draw(st.sampled_from([1, 2, 4, 8]))
    nodes = draw(st.integers(1, 4))
    fixed = {k: draw(st.none() | small_powers) for k in ("tp_size", "pp_size", "dp_size", "ep_size")}
    return Topology.model_validate({
        "name": "random",
        "nodes": [{"name": f"n{i}", "address": f"10.0.0.{i + 1}",
                   "accelerators": {"kind": kind, "count": per_node},
                   "nics": [{"name": "eth0", "mtu": draw(st.sampled_from([1500, 9000])),
                             "speed_gbps": 200, "rdma": draw(st.booleans())}]} for i in range(nodes)],
        "interconnect": {"inter_node": draw(st.none() | st.sampled_from(sorted(NETWORKS)))},
        "model": {"id": draw(st.sampled_from(sorted(SPECS))),
                  "precision": draw(st.sampled_from(["bf16", "fp8", "nvfp4", "fp32"]))},
        "engine": {"kind": draw(st.sampled_from(["embedded", "vllm"])),
                   "parallel": {k: v for k, v in fixed.items() if v is not None},
                   "memory_utilization": draw(st.floats(0.2, 0.99))},
        "serving": {"max_context": draw(st.integers(16, 1_048_576)), "concurrency": draw(st.integers(1, 512)),
                    "kv_cache_dtype": draw(st.sampled_from(["auto", "bf16", "fp8", "fp32"])),
                    "speculative_tokens": draw(st.sampled_from([0, 1, 5])),
                    "max_batched_tokens": draw(st.integers(16, 65536))},
    })


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topologies())
def test_random_topologies_never_crash_the_compiler(topology):
    try:
        plan = compile_plan(topology, with_alternatives=False)
    except PlanInputError as err:
        assert err.field and str(err)
        return
    assert plan.verdict in ("fits", "tight", "infeasible")
    if plan.memory and plan.verdict != "infeasible":
        mem = plan.memory
        assert mem.free >= 0
        assert mem.weights + mem.activations + mem.cuda_graphs + mem.kv_cache + mem.mamba_state + mem.free == mem.usable
        assert plan.cache.max_num_seqs >= 1
        assert plan.estimate.decode_tokens_per_s_per_sequence > 0
    if plan.parallel:
        p = plan.parallel
        assert p.tp_size * p.pp_size * p.dp_size <= topology.accelerator_count
