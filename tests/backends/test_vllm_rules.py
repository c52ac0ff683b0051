"""The validator refuses, before anything loads, what vLLM 0.33 would only fail on later: with the reason,
the combination that works, and where the rule comes from. Each refusal's fix, applied, passes."""

from __future__ import annotations

import pytest

from nemodeploy.backends.vllm import VllmError, serve_argv, serve_env


def refused(topology, plan, launcher=None) -> str:
    with pytest.raises(VllmError) as err:
        serve_argv(topology, plan, launcher=launcher)
    message = str(err.value)
    assert "\n" not in message
    return message


def passes(topology, plan, launcher=None) -> list[str]:
    return serve_argv(topology, plan, launcher=launcher)


def test_mtp_with_pipeline_parallel(make):
    message = refused(*make("b200-8x-bf16", engine__parallel={"tp_size": 4, "pp_size": 2}, serving__speculative_tokens=3))
    assert "MTP speculative decoding with pipeline parallel size 2" in message and "vllm issue 49355" in message
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 1 with MTP" in message
    passes(*make("b200-8x-bf16", engine__parallel={"tp_size": 8, "pp_size": 1}, serving__speculative_tokens=3))
    # an alias in extra_args is judged as the option it stands for
    assert "vllm issue 49355" in refused(*make("gb200-4x-nvfp4", engine__extra_args={"-pp": 2}))
    passes(*make("b200-8x-bf16", engine__parallel={"tp_size": 4, "pp_size": 2}, serving__speculative_tokens=0))


def test_max_num_seqs_above_the_mamba_slots(make):
    topology, plan = make("h200-8x-bf16", engine__extra_args={"max-num-seqs": 64})
    slots = plan.cache.num_mamba_slots
    message = refused(topology, plan)
    assert f"--max-num-seqs 64 is above the {slots} Mamba state slots" in message and "vllm issue 49064" in message
    assert f"what works: --max-num-seqs {slots}" in message
    passes(*make("h200-8x-bf16", engine__extra_args={"max-num-seqs": slots}))


@pytest.mark.parametrize("profile, backend, works", [
    ("h100-8x-nvfp4", "flashinfer_trtllm", "marlin"),  # Hopper has no FP4 tensor cores: W4A16 Marlin
    ("spark-4x", "flashinfer_trtllm", "flashinfer_cutlass"),  # GB10 is sm121, not the sm100 TRT-LLM kernels
    ("gb200-4x-nvfp4", "triton", "flashinfer_trtllm"),  # Triton has no NVFP4 MoE kernel
])
def test_an_nvfp4_moe_backend_the_gpu_lacks(make, profile, backend, works):
    message = refused(*make(profile, engine__extra_args={"moe-backend": backend}))
    assert f"--moe-backend {backend}:" in message and f"what works: --moe-backend {works}" in message
    passes(*make(profile, engine__extra_args={"moe-backend": works}))


def test_vendor_specific_kernels_on_the_other_vendor(make):
    assert "AMD (ROCm) only" in refused(*make("h200-8x-bf16", engine__extra_args={"moe-backend": "aiter"}))
    assert "NVIDIA-only" in refused(*make("mi300x-8x-bf16", engine__extra_args={"moe-backend": "deep_gemm"}))
    assert "NVIDIA-only" in refused(*make("mi300x-8x-bf16", engine__extra_args={"mamba-backend": "flashinfer"}))


def test_a_context_above_the_native_one_needs_the_opt_in(make):
    nano = {"model": {"id": "nemotron-3-nano"}}
    topology, plan = make("h200-8x-bf16", engine__extra_args={"max-model-len": 524288}, **nano)
    message = refused(topology, plan)
    assert "--max-model-len 524288 is above the model's native context of 262144 tokens" in message
    assert "serving.allow_long_context: true" in message
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" not in serve_env(topology, plan)
    topology, plan = make("h200-8x-bf16", serving__allow_long_context=True, serving__max_context=524288, **nano)
    assert "524288" in passes(topology, plan)
    assert serve_env(topology, plan)["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] == "1"
    topology, plan = make("h200-8x-bf16", serving__allow_long_context=True)  # opted in, but within the native context
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" not in serve_env(topology, plan)


def test_a_tool_parser_without_auto_tool_choice(make):
    message = refused(*make("h200-8x-bf16", engine__extra_args={"enable-auto-tool-choice": False}))
    assert "--tool-call-parser qwen3_coder without --enable-auto-tool-choice" in message
    assert "what works: --enable-auto-tool-choice --tool-call-parser qwen3_coder" in message
    message = refused(*make("h200-8x-bf16", engine__extra_args={"tool-call-parser": None}))
    assert "--enable-auto-tool-choice needs a --tool-call-parser" in message


def test_prefix_caching_with_mtp_on_a_hybrid_model(make):
    message = refused(*make("gb200-4x-nvfp4", engine__extra_args={"enable-prefix-caching": True}))
    assert "prefix caching" in message and "vllm issue 39809" in message and "--disable-prefix-caching" in message
    assert "--enable-prefix-caching" in passes(*make("gb200-4x-nvfp4", serving__speculative_tokens=0))


def test_data_and_expert_parallel_across_nodes_on_ray(make):
    parallel = {"tp_size": 4, "pp_size": 2, "dp_size": 2, "ep_size": 8}
    topology, plan = make("h100-16x-bf16", engine__parallel=parallel)
    message = refused(topology, plan, launcher="ray")
    assert "vllm issue 44878" in message and "what works: engine.launcher: mp" in message
    passes(topology, plan, launcher="mp")
    # replicas that span nodes cannot go to the mp launcher: one replica over all the GPUs can
    message = refused(*make("spark-4x", engine__parallel={"tp_size": 2, "dp_size": 2}))
    assert "what works: engine.parallel.dp_size: 1, one replica over all the GPUs" in message
    passes(*make("spark-4x", engine__parallel={"dp_size": 1}))


def b200_nodes(count: int, gpus: int) -> list[dict]:
    return [{"name": f"b{i}", "address": f"192.0.2.{100 + i}", "accelerators": {"kind": "b200", "count": gpus},
             "nics": [{"name": "eth0", "rdma": True, "hca": "mlx5_0"}]} for i in range(count)]


def test_ray_places_data_parallel_replicas_from_the_head(make):
    # two 8-GPU nodes, a tp 8 replica on each: Ray places one on the head, one elsewhere
    topology, plan = make("b200-8x-bf16", nodes=b200_nodes(2, 8),
                          engine__parallel={"tp_size": 8, "pp_size": 1, "dp_size": 2, "ep_size": 1})
    value = dict(zip(argv := passes(topology, plan), argv[1:]))
    assert value["--data-parallel-backend"] == "ray" and value["--data-parallel-size-local"] == "1"
    assert "--distributed-executor-backend" not in argv  # each replica fits on a node
    assert "VLLM_RAY_DP_PACK_STRATEGY" not in serve_env(topology, plan)
    # four 4-GPU nodes: each tp 8 replica spans two, which Ray packs only with the span strategy
    topology, plan = make("b200-8x-bf16", nodes=b200_nodes(4, 4),
                          engine__parallel={"tp_size": 8, "pp_size": 1, "dp_size": 2, "ep_size": 1})
    value = dict(zip(argv := passes(topology, plan), argv[1:]))
    assert value["--distributed-executor-backend"] == "ray" and value["--data-parallel-size-local"] == "1"
    assert serve_env(topology, plan)["VLLM_RAY_DP_PACK_STRATEGY"] == "span"
    assert "VLLM_RAY_DP_PACK_STRATEGY" not in serve_env(topology, plan, node_rank=1)
    assert serve_env(topology, plan, node_rank=1)["NCCL_IB_HCA"] == "mlx5_0"


def test_removed_unknown_and_misspelt_settings(make):
    cases = {
        "swap-space": (16, "--swap-space was removed"),
        "no-such-option": (1, "--no-such-option is not an option of vllm serve 0.33.0"),
        "reasoning-parser": ("super_v3", "--reasoning-parser 'super_v3' is not one vLLM 0.33.0 has"),
        "kv-cache-dtype": ("fp4", "--kv-cache-dtype 'fp4' is not one vLLM 0.33.0 has"),
        "mamba-ssm-cache-dtype": ("fp8", "'fp8' is not one vLLM 0.33.0 accepts (auto, bfloat16, float16, float32)"),
        "kv-transfer-config": ({"kv_connector": "NixlConnector"}, "vllm issue 46453"),
    }
    for option, (value, reason) in cases.items():
        assert reason in refused(*make("h200-8x-bf16", engine__extra_args={option: value})), option


def test_an_infeasible_plan_has_nothing_to_launch(make):
    with pytest.raises(VllmError, match="h100-8x-bf16: no plan to launch: 1.10 TB of bf16 weights do not fit"):
        serve_argv(*make("h100-8x-bf16"))
