"""FP8 KV cache (kv_cache_dtype "fp8"): K / V stored as float8_e4m3fn divided by per-tensor scales,
which come from a ModelOpt checkpoint calibrated for it (k_proj.k_scale / v_proj.v_scale) or are 1.0."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from model_harness import Runner, prompt
from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.loader import load_model

FP8 = torch.float8_e4m3fn
E4M3_STEP = 2.0**-3  # 3 mantissa bits: a stored value is within half a step, relative


@pytest.fixture
def calibrated(modelopt_checkpoint):
    return modelopt_checkpoint("MIXED_PRECISION")[0]


def _prefill(directory, kv_dtype, tokens):
    runner = Runner(load_model(directory, torch.float32, with_mtp=False), kv_dtype=kv_dtype)
    return runner, runner.step([(0, tokens)])[0]


def test_cache_holds_k_and_v_over_the_checkpoints_scales_in_fp8(calibrated):
    tokens = prompt(20, seed=4)
    exact, _ = _prefill(calibrated, None, tokens)
    fp8, _ = _prefill(calibrated, FP8, tokens)
    checkpoint = load_file(calibrated / "model.safetensors")
    attention = [name for name, m in fp8.model.named_modules() if hasattr(m, "k_scale")]
    for name in attention:
        module = fp8.model.get_submodule(name)
        assert module.k_scale.item() == checkpoint[f"{name}.k_proj.k_scale"].item() != 1.0
        assert module.v_scale.item() == checkpoint[f"{name}.v_proj.v_scale"].item() != 1.0
    # the first attention layer sees the same input either way (later ones see the effect of the FP8 cache)
    first, key = fp8.model.get_submodule(attention[0]), attention[0].removesuffix(".mixer")
    for i, scale in enumerate((first.k_scale, first.v_scale)):
        stored, reference = fp8.cache.kv[key][i][:2], exact.cache.kv[key][i][:2]  # the prompt's 20 positions
        assert stored.dtype == FP8 and reference.abs().max() > 0
        error = (stored.float() * scale - reference).abs()
        assert (error <= E4M3_STEP / 2 * reference.abs() + 2.0**-10 * scale).all()


def test_fp8_kv_logits_stay_close_to_the_exact_cache(calibrated):
    tokens = prompt(20, seed=5)
    _, exact = _prefill(calibrated, None, tokens)
    _, fp8 = _prefill(calibrated, FP8, tokens)
    assert not torch.equal(fp8, exact)  # the cache really is lower precision
    torch.testing.assert_close(fp8, exact, atol=0.05 * exact.abs().max().item(), rtol=0)
    assert (fp8.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.9


def test_an_uncalibrated_checkpoint_uses_scale_one(reference):
    directory, _ = reference("latent_g2_kv2")
    runner, logits = _prefill(directory, FP8, prompt(12, seed=6))
    scales = [m.k_scale.item() for m in runner.model.modules() if hasattr(m, "k_scale")]
    assert scales and all(s == 1.0 for s in scales)
    assert torch.isfinite(logits).all()


def test_engine_config_names_the_kv_cache_dtypes(reference):
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, fp8, not 'int8'"):
        EngineConfig(model="m", kv_cache_dtype="int8")


def test_runner_allocates_and_counts_an_fp8_cache(reference):
    from nemodeploy.engine.model_runner import ModelRunner

    directory = str(reference("latent_g2_kv2")[0])
    exact, fp8 = (ModelRunner(EngineConfig(model=directory, num_kv_blocks=8, kv_cache_dtype=d)) for d in ("auto", "fp8"))
    assert all(k.dtype == v.dtype == FP8 for k, v in fp8.cache.kv.values())
    assert fp8.cache_info()["kv_bytes"] * 4 == exact.cache_info()["kv_bytes"] > 0  # fp32 model: 4 bytes -> 1
