"""From a topology's serving fields to the engine: the plan's KV dtype and hybrid prefix caching reach the
embedded engine's EngineConfig (what `up` serves locally and what the cluster launch spec carries), and
reach vLLM as --kv-cache-dtype / --enable-prefix-caching where valid; what cannot run is one line."""

from __future__ import annotations

import pytest

from nemodeploy.backends.cluster_engine import launch_spec
from nemodeploy.backends.engine_config import LaunchError, engine_config
from nemodeploy.backends.vllm import VllmError, serve_argv
from nemodeploy.plan.compiler import compile_plan


def test_the_plans_fp8_kv_cache_reaches_the_engine_and_the_cluster_launch(make):
    topology, plan = make("local", serving__kv_cache_dtype="fp8")
    assert plan.precision.kv_cache_dtype == "fp8"
    assert engine_config(topology, plan).kv_cache_dtype == "fp8"
    assert launch_spec(topology, plan, "127.0.0.1:6379")["config"]["kv_cache_dtype"] == "fp8"


@pytest.mark.parametrize("precision,kv", [("fp32", "auto"), ("fp32", "fp32"), ("bf16", "bf16"), ("bf16", "auto")])
def test_kv_in_the_model_dtype_is_auto(make, precision, kv):
    topology, plan = make("local", model__precision=precision, serving__kv_cache_dtype=kv)
    assert engine_config(topology, plan).kv_cache_dtype == "auto"


def test_a_kv_dtype_the_engine_cannot_hold_is_one_line(make):
    topology, plan = make("local", serving__kv_cache_dtype="bf16")  # fp32 weights: KV would be fp32, not bf16
    with pytest.raises(LaunchError) as err:
        engine_config(topology, plan)
    assert "\n" not in str(err.value) and "bf16" in str(err.value) and "serving.kv_cache_dtype" in str(err.value)


def test_prefix_caching_from_the_topology_reaches_the_engine(make):
    topology, plan = make("local", serving__prefix_caching=True, serving__mamba_checkpoint_interval=128,
                          serving__mamba_checkpoints=9)
    config = engine_config(topology, plan)
    assert (config.prefix_caching, config.mamba_checkpoint_interval, config.num_mamba_checkpoints) == (True, 128, 9)
    assert launch_spec(topology, plan, "127.0.0.1:6379")["config"]["prefix_caching"] is True
    off = engine_config(*make("local"))
    assert (off.prefix_caching, off.num_mamba_checkpoints) == (False, 0)


def test_vllm_prefix_caching_follows_the_field_where_valid(make):
    default = serve_argv(*make("gb200-4x-nvfp4", serving__speculative_tokens=0))
    assert "--enable-prefix-caching" in default
    off = serve_argv(*make("gb200-4x-nvfp4", serving__speculative_tokens=0, serving__prefix_caching=False))
    assert "--disable-prefix-caching" in off and "--enable-prefix-caching" not in off
    with_mtp = serve_argv(*make("gb200-4x-nvfp4"))
    assert "--disable-prefix-caching" in with_mtp, "off by default with MTP on a hybrid model"
    assert with_mtp[with_mtp.index("--kv-cache-dtype") + 1] == "fp8"


def test_vllm_still_refuses_prefix_caching_with_mtp_on_a_hybrid_model(make):
    with pytest.raises(VllmError) as err:
        serve_argv(*make("gb200-4x-nvfp4", serving__prefix_caching=True))
    assert "\n" not in str(err.value) and "vllm issue 39809" in str(err.value)


def test_the_kubernetes_serve_command_carries_what_up_gives_the_engine():
    """The pod runs `nemodeploy serve` with flags: parsed by serve itself, they make up's EngineConfig."""
    from nemodeploy.cli.serve import build_config, serve
    from nemodeploy.k8s.launch import embedded_argv
    from nemodeploy.topology.loader import loads

    topology = loads("""
name: pod
nodes: [{name: gpu0, address: 127.0.0.1, accelerators: {kind: h100-sxm, count: 1}}]
model: {id: nemotron-h-tiny, precision: bf16}
engine: {kind: embedded}
serving: {max_context: 4096, concurrency: 8, kv_cache_dtype: fp8, prefix_caching: true, mamba_checkpoints: 5}
""", "pod.yaml")
    plan = compile_plan(topology)
    argv = embedded_argv(topology, plan, "/models/tiny")
    params = serve.make_context("serve", argv[2:]).params
    for launch_only in ("config_file", "host", "port", "api_key"):
        del params[launch_only]
    served = build_config(params.pop("model"), None, params)
    expected = engine_config(topology, plan).to_dict()
    for field in ("kv_cache_dtype", "prefix_caching", "mamba_checkpoint_interval", "num_mamba_checkpoints",
                  "num_kv_blocks", "num_mamba_slots", "max_model_len", "dtype"):
        assert getattr(served, field) == expected[field], field
    assert served.kv_cache_dtype == "fp8" and served.prefix_caching and served.num_mamba_checkpoints == 5


def test_a_mamba_state_dtype_other_than_the_checkpoints_is_one_line(make):
    topology, plan = make("local", serving__mamba_ssm_cache_dtype="bfloat16")  # the tiny model keeps float32
    with pytest.raises(LaunchError) as err:
        engine_config(topology, plan)
    assert "\n" not in str(err.value) and "float32" in str(err.value) and "bfloat16" in str(err.value)
    assert engine_config(*make("local", serving__mamba_ssm_cache_dtype="float32")).model
