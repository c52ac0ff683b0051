"""NVIDIA ModelOpt checkpoints of the tiny NemotronH, quantized and exported by nvidia-modelopt itself
on this CPU, served by the engine as stored (NVFP4 / FP8 tensors) and held to transformers running
the same weights dequantized by ModelOpt's own code: logits, tp 2 / ep 2, and greedy text over HTTP
from `nemodeploy serve`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest
import torch

from model_harness import Runner, hf_logits, prefill_decode_logits, prompt, two_rank_logits
from nemodeploy.engine.loader import CheckpointError, load_model
from nemodeploy.engine.model.parallel import ParallelConfig
from nemodeploy.engine.quant.config import QuantizationError
from nemodeploy.net import free_port


def _stored_dtypes(model) -> dict[str, torch.dtype]:
    return {name: p.dtype for name, p in model.named_parameters()}


def test_mixed_precision_checkpoint_is_held_as_stored(modelopt_checkpoint):
    quantized, _ = modelopt_checkpoint("MIXED_PRECISION")
    dtypes = _stored_dtypes(load_model(quantized, torch.float32))
    moe = "backbone.layers.1.mixer"
    assert dtypes[f"{moe}.w_up.weight"] == dtypes[f"{moe}.w_down.weight"] == torch.uint8  # NVFP4: 2 values a byte
    assert dtypes[f"{moe}.w_up.weight_scale"] == torch.float8_e4m3fn
    assert dtypes[f"{moe}.shared_experts.up_proj.weight"] == torch.float8_e4m3fn
    assert dtypes[f"{moe}.fc1_latent_proj.weight"] == dtypes["backbone.layers.0.mixer.in_proj.weight"] == torch.float32
    assert dtypes["mtp.layers.1.mixer.w_up.weight"] == torch.float32  # excluded as mtp*
    assert not any(name.endswith("input_scale") for name in dtypes)  # W4A16 / W8A16: activations unquantized


@pytest.mark.parametrize("algo", ["MIXED_PRECISION", "NVFP4", "FP8"])
def test_logits_equal_transformers_on_the_dequantized_weights(modelopt_checkpoint, algo):
    from transformers import NemotronHForCausalLM

    quantized, dequantized = modelopt_checkpoint(algo)
    hf = NemotronHForCausalLM.from_pretrained(dequantized, dtype=torch.float32).eval()
    tokens = prompt(14, seed=2)
    engine = Runner(load_model(quantized, torch.float32, with_mtp=False)).step([(0, tokens)])[0]
    torch.testing.assert_close(engine, hf_logits(hf, tokens), atol=1e-4, rtol=1e-4)


def test_tensor_and_expert_parallel_match_single_process(modelopt_checkpoint):
    quantized, _ = modelopt_checkpoint("MIXED_PRECISION")
    cases = [(str(quantized), ParallelConfig(tp_rank=0, tp_size=2)), (str(quantized), ParallelConfig(ep_rank=0, ep_size=2))]
    results = two_rank_logits(cases)
    expected = prefill_decode_logits(quantized)
    for (rank, i), logits in results.items():
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4, msg=f"case {cases[i][1]} rank {rank}")


def test_greedy_text_over_http_equals_transformers(modelopt_checkpoint, tmp_path):
    from transformers import NemotronHForCausalLM

    from nemodeploy.engine.tokenizer import Tokenizer

    quantized, dequantized = modelopt_checkpoint("MIXED_PRECISION")
    hf = NemotronHForCausalLM.from_pretrained(dequantized, dtype=torch.float32).eval()
    prompts, n = [[11 + i for i in range(k)] for k in (5, 17, 30)], 24
    expected = []
    for p in prompts:
        with torch.no_grad():
            out = hf.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        expected.append(Tokenizer(quantized).decode(out[0, len(p):].tolist()))
    assert len(set(expected)) == len(prompts)

    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "nemodeploy.cli", "serve", "--model", str(quantized), "--port", str(port), "--dtype", "float32",
         "--speculative-tokens", "2"],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the server was not healthy within 2 minutes"
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        texts = []
        for p in prompts:
            body = {"model": quantized.name, "prompt": p, "max_tokens": n, "temperature": 0, "ignore_eos": True}
            r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
            r.raise_for_status()
            texts.append(r.json()["choices"][0]["text"])
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    assert texts == expected


def _copy(checkpoint, tmp_path, name="ckpt"):
    return shutil.copytree(checkpoint, tmp_path / name)


def _edit_json(path, edit) -> None:
    body = json.loads(path.read_text())
    edit(body)
    path.write_text(json.dumps(body))


def test_legacy_hf_quant_config_alone_loads_the_same(modelopt_checkpoint, tmp_path):
    quantized, _ = modelopt_checkpoint("MIXED_PRECISION")
    legacy = _copy(quantized, tmp_path)
    _edit_json(legacy / "config.json", lambda c: c.pop("quantization_config"))
    assert _stored_dtypes(load_model(legacy, torch.float32)) == _stored_dtypes(load_model(quantized, torch.float32))


def test_quantized_tensors_without_a_quantization_config_are_refused_with_the_file_named(modelopt_checkpoint, tmp_path):
    quantized, _ = modelopt_checkpoint("MIXED_PRECISION")
    bare = _copy(quantized, tmp_path)
    _edit_json(bare / "config.json", lambda c: c.pop("quantization_config"))
    (bare / "hf_quant_config.json").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: backbone\.layers\.1\.mixer\.w_up\.weight is stored quantized"):
        load_model(bare, torch.float32)


def test_an_algorithm_the_engine_does_not_run_names_the_module(modelopt_checkpoint, tmp_path):
    quantized, _ = modelopt_checkpoint("MIXED_PRECISION")
    awq = _copy(quantized, tmp_path)
    _edit_json(awq / "config.json",
               lambda c: c["quantization_config"]["quantized_layers"]["backbone.layers.6.mixer.experts"].update(quant_algo="W4A8_AWQ"))
    with pytest.raises(QuantizationError, match=r"backbone\.layers\.6\.mixer\.experts: quantization W4A8_AWQ is not supported"):
        load_model(awq, torch.float32)


def test_another_quantization_method_is_refused_with_the_file_named(modelopt_checkpoint, tmp_path):
    quantized, _ = modelopt_checkpoint("FP8")
    gptq = _copy(quantized, tmp_path)
    _edit_json(gptq / "config.json", lambda c: c.update(quantization_config={"quant_method": "gptq", "bits": 4}))
    with pytest.raises(QuantizationError, match=r"config\.json: quantization method 'gptq' is not supported"):
        load_model(gptq, torch.float32)


def _topology(tmp_path, checkpoint, precision: str):
    from nemodeploy.topology.loader import load

    data = load("local").model_dump(mode="json")
    data.update(name=f"modelopt-{precision}", model={"path": str(checkpoint), "precision": precision})
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(json.dumps(data))
    return path


def test_a_plan_of_quantized_weights_launches_only_on_a_checkpoint_that_stores_them(modelopt_checkpoint, tmp_path):
    from nemodeploy.backends.engine_config import LaunchError, engine_config
    from nemodeploy.engine.tiny import tiny_model_dir
    from nemodeploy.plan.compiler import compile_plan
    from nemodeploy.topology.loader import load

    quantized, _ = modelopt_checkpoint("MIXED_PRECISION")  # NVFP4 routed experts, FP8 shared experts
    for precision in ("nvfp4", "fp8"):
        topology = load(str(_topology(tmp_path, quantized, precision)))
        config = engine_config(topology, compile_plan(topology))
        assert config.dtype == "float32" and config.kv_cache_dtype == "auto"  # the CPU plan's fp32 activations / KV
    topology = load(str(_topology(tmp_path, tiny_model_dir(), "nvfp4")))
    with pytest.raises(LaunchError) as err:
        engine_config(topology, compile_plan(topology))
    assert "\n" not in str(err.value) and "unquantized weights" in str(err.value) and "model.precision" in str(err.value)
    fp8_only, _ = modelopt_checkpoint("FP8")
    topology = load(str(_topology(tmp_path, fp8_only, "nvfp4")))
    with pytest.raises(LaunchError) as err:
        engine_config(topology, compile_plan(topology))
    assert "holds FP8 (ModelOpt)" in str(err.value)


def test_up_of_an_nvfp4_topology_serves_the_modelopt_checkpoint(modelopt_checkpoint, tmp_path, monkeypatch):
    """`up` of the local profile with model.precision nvfp4 on a ModelOpt MIXED_PRECISION checkpoint:
    greedy text over HTTP equals transformers on ModelOpt's dequantized copy."""
    from transformers import NemotronHForCausalLM

    from nemodeploy.engine.tokenizer import Tokenizer

    quantized, dequantized = modelopt_checkpoint("MIXED_PRECISION")
    hf = NemotronHForCausalLM.from_pretrained(dequantized, dtype=torch.float32).eval()
    prompt_ids, n = [11 + i for i in range(12)], 16
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    expected = Tokenizer(quantized).decode(out[0, len(prompt_ids):].tolist())

    monkeypatch.setenv("NEMODEPLOY_CACHE", str(tmp_path / "cache"))
    port, cli = free_port(), [sys.executable, "-m", "nemodeploy.cli"]
    up = subprocess.run([*cli, "up", str(_topology(tmp_path, quantized, "nvfp4")), "--detach", "--port", str(port)],
                        capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr
        body = {"model": quantized.name, "prompt": prompt_ids, "max_tokens": n, "temperature": 0, "ignore_eos": True}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == expected
    finally:
        down = subprocess.run([*cli, "down"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
