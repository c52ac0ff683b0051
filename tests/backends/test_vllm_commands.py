"""Every fitting GPU profile as a vLLM launch: pinned per node (golden files), and accepted by vLLM's flag table.

Regenerate the golden files after a deliberate change: NEMODEPLOY_UPDATE_GOLDEN=1 pytest tests/backends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nemodeploy.backends.vllm import VllmError, launch_nodes, serve_argv, serve_env
from nemodeploy.backends.vllm_render import render
from nemodeploy.backends.vllm_table import check_argv
from nemodeploy.plan.compiler import compile_plan
from nemodeploy.topology.loader import load, profile_names

GOLDEN = Path(__file__).with_name("golden")


def _launchable() -> list[str]:
    names = []
    for name in profile_names():
        topology = load(name)
        if topology.engine.kind == "vllm" and compile_plan(topology, with_alternatives=False).fits:
            names.append(name)
    return names


PROFILES = _launchable()


def test_the_gpu_profiles_that_fit_are_all_launchable():
    assert {"gb200-4x-nvfp4", "b200-8x-bf16", "h100-16x-bf16", "h100-8x-nvfp4", "h200-8x-bf16", "mi300x-8x-bf16",
            "spark-4x"} <= set(PROFILES)
    stale = {p.stem.removeprefix("vllm-") for p in GOLDEN.glob("vllm-*.json")} - set(PROFILES)
    assert not stale, f"golden files of profiles that no longer launch: {sorted(stale)}"


@pytest.mark.parametrize("name", PROFILES)
def test_profile_renders_the_pinned_commands(name):
    topology = load(name)
    rendered = render(topology, compile_plan(topology))
    path = GOLDEN / f"vllm-{name}.json"
    if os.environ.get("NEMODEPLOY_UPDATE_GOLDEN"):
        path.write_text(json.dumps(rendered, indent=1) + "\n")
    assert path.exists(), f"no golden file {path.name}: run with NEMODEPLOY_UPDATE_GOLDEN=1"
    assert rendered == json.loads(path.read_text())


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("launcher", ["ray", "mp"])
def test_every_node_command_passes_the_flag_table(name, launcher):
    topology = load(name)
    plan = compile_plan(topology)
    nodes = launch_nodes(topology, plan)
    for rank in range(len(nodes) if launcher == "mp" else 1):
        try:
            argv = serve_argv(topology, plan, node_rank=rank, launcher=launcher)
        except VllmError as refused:  # a launcher the validator refuses for this layout says why, in one line
            assert launcher != topology.engine.launcher and "\n" not in str(refused)
            continue
        assert argv[:3] == ["vllm", "serve", topology.model.path or topology.model.id]
        assert check_argv(argv[3:]) == []
        assert serve_env(topology, plan, node_rank=rank)["VLLM_HOST_IP"] == nodes[rank].address


def test_the_plan_sizes_reach_the_command(make):
    topology, plan = make("gb200-4x-nvfp4")
    argv = serve_argv(topology, plan)
    value = dict(zip(argv, argv[1:]))
    assert value["--max-model-len"] == str(plan.cache.max_model_len)
    assert value["--max-num-seqs"] == str(plan.cache.max_num_seqs) and plan.cache.max_num_seqs <= plan.cache.num_mamba_slots
    assert value["--max-num-batched-tokens"] == str(plan.cache.max_num_batched_tokens)
    assert float(value["--gpu-memory-utilization"]) == plan.memory.utilization
    assert json.loads(value["--speculative-config"]) == {"method": "mtp", "num_speculative_tokens": plan.cache.speculative_tokens}
    assert value["--tensor-parallel-size"] == str(plan.parallel.tp_size)
    assert value["--moe-backend"] == "flashinfer_trtllm" and value["--kv-cache-dtype"] == "fp8"
    assert "--disable-prefix-caching" in argv  # MTP on a hybrid model


def test_ray_launcher_runs_vllm_serve_on_the_head_only(make):
    topology, plan = make("spark-4x")
    assert "--distributed-executor-backend" in serve_argv(topology, plan)
    with pytest.raises(VllmError, match="only the head runs vllm serve; node rank 2 \\(spark2\\) only joins"):
        serve_argv(topology, plan, node_rank=2)


def test_mp_launcher_gives_every_node_its_rank_and_the_head_address(make):
    topology, plan = make("spark-4x", engine__launcher="mp")
    head = serve_argv(topology, plan)
    third = serve_argv(topology, plan, node_rank=2, head_address="$(LWS_LEADER_ADDRESS)")
    assert "--headless" not in head and "--distributed-executor-backend" not in head
    tail = third[third.index("--nnodes"):]
    assert tail == ["--nnodes", "4", "--node-rank", "2", "--master-addr", "$(LWS_LEADER_ADDRESS)", "--master-port",
                    "29501", "--headless"]


def test_mp_launcher_with_whole_replicas_per_node_uses_local_data_parallel(make):
    topology, plan = make("h100-16x-bf16", engine__launcher="mp", engine__parallel={"tp_size": 4, "pp_size": 2, "dp_size": 2})
    second = serve_argv(topology, plan, node_rank=1)
    value = dict(zip(second, second[1:]))
    assert value["--data-parallel-size"] == "2" and value["--data-parallel-size-local"] == "1"
    assert value["--data-parallel-start-rank"] == "1" and value["--data-parallel-address"] == "192.0.2.40"
    assert "--headless" in second


def test_extra_args_override_and_add_flags(make):
    topology, plan = make("h200-8x-bf16", engine__extra_args={"max-num-seqs": 4, "enable_prefix_caching": False,
                                                             "async-scheduling": True, "compilation-config": {"level": 3}})
    argv = serve_argv(topology, plan)
    assert argv.count("--max-num-seqs") == 1 and argv[argv.index("--max-num-seqs") + 1] == "4"
    assert "--disable-prefix-caching" in argv and "--enable-prefix-caching" not in argv
    assert "--async-scheduling" in argv
    assert json.loads(argv[argv.index("--compilation-config") + 1]) == {"level": 3}
