"""From a topology and its plan to the embedded engine's EngineConfig.

The plan sized the caches; this only carries its counts over and finds the
checkpoint directory. Nothing is downloaded: the embedded engine serves a local
HF-format directory, or the tiny model it writes itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from nemodeploy.plan.precision import DTYPE_BYTES
from nemodeploy.plan.types import Plan
from nemodeploy.topology.schema import Topology

TINY_MODEL = "nemotron-h-tiny"
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
PRECISIONS = {torch_name: name for name, torch_name in TORCH_DTYPES.items()}
# a plan's quantized weights -> the ModelOpt format the checkpoint must store them in (bf16 activations)
QUANTIZED = {"nvfp4": "NVFP4", "fp8": "FP8"}


class LaunchError(RuntimeError):
    """The plan cannot be launched with the embedded engine; the message says what to change."""


def model_dir(topology: Topology) -> Path:
    if topology.model.path:
        path = Path(topology.model.path).expanduser()
        if not (path / "config.json").is_file():
            raise LaunchError(f"model.path {path} has no config.json")
        return path
    if topology.model.id == TINY_MODEL:
        from nemodeploy.engine.tiny import tiny_model_dir

        return tiny_model_dir()
    raise LaunchError(
        f"the embedded engine serves a local checkpoint: download {topology.model.id} and set model.path "
        f"to its directory (or use engine.kind: vllm)"
    )


def kv_cache_dtype(plan: Plan, dtype: str) -> str:
    """The plan's KV dtype as EngineConfig names it: "fp8", or "auto" (the engine's `dtype`) where that
    holds no more than the plan counted (`auto` on a CPU plans fp32 KV; bf16 weights then keep it in bf16)."""
    kv, activations = plan.precision.kv_cache_dtype, PRECISIONS[dtype]
    if kv == "fp8":
        return "fp8"
    if DTYPE_BYTES[activations] <= DTYPE_BYTES[kv]:
        return "auto"
    raise LaunchError(f"the embedded engine keeps the KV cache in its dtype ({activations}) or in fp8, and the "
                      f"plan counted {kv}: set serving.kv_cache_dtype to {activations} or fp8")


def check_mamba_state_dtype(plan: Plan, directory: Path) -> None:
    """The engine keeps the SSM state in the checkpoint's mamba_ssm_cache_dtype: a plan that counted
    another (serving.mamba_ssm_cache_dtype) would not hold what the engine allocates."""
    from nemodeploy.models.config import NemotronHConfig

    try:
        stored = NemotronHConfig.from_dict(json.loads((directory / "config.json").read_text())).mamba_ssm_cache_dtype
    except (OSError, ValueError) as err:  # ConfigError is a ValueError, as is a JSON error
        raise LaunchError(f"{directory / 'config.json'}: {err}") from None
    if stored != plan.precision.mamba_ssm_dtype:
        raise LaunchError(f"the embedded engine keeps the Mamba SSM state in the checkpoint's mamba_ssm_cache_dtype "
                          f"({stored}), and the plan counted {plan.precision.mamba_ssm_dtype}: set "
                          "serving.mamba_ssm_cache_dtype to auto")


def engine_dtype(plan: Plan) -> str:
    """EngineConfig.dtype for the plan: its weights' dtype for bf16 / fp32 weights; for nvfp4 / fp8
    weights (a ModelOpt checkpoint, see check_quantized_checkpoint) the activations the plan
    assumes: bf16 on a GPU, fp32 on a CPU (as its `auto` KV dtype)."""
    weights = plan.precision.weights
    if weights in TORCH_DTYPES:
        return TORCH_DTYPES[weights]
    if weights in QUANTIZED:
        return "float32" if plan.accelerator == "cpu" else "bfloat16"
    raise LaunchError(f"the embedded engine runs bf16, fp32 and ModelOpt nvfp4 / fp8 checkpoints, not {weights}; "
                      "set model.precision to one of them or use engine.kind: vllm")


def check_quantized_checkpoint(plan: Plan, directory: Path) -> None:
    """An nvfp4 / fp8 plan counted weights in that format: the checkpoint must store them so (the
    engine reads which module holds which format from the checkpoint itself)."""
    weights = plan.precision.weights
    if weights not in QUANTIZED:
        return
    from nemodeploy.engine.quant.config import read_quant_config

    try:
        quant = read_quant_config(directory)
    except (OSError, ValueError) as err:  # QuantizationError is a ValueError, as is a JSON error
        raise LaunchError(f"{directory}: {err}") from None
    stored = {quant.algo, *quant.layers.values()} - {None}
    if QUANTIZED[weights] not in stored:
        raise LaunchError(f"model.precision is {weights}, and {directory} holds "
                          f"{'/'.join(sorted(stored)) + ' (ModelOpt)' if stored else 'unquantized weights'}: "
                          "set model.precision to what the checkpoint stores")


def engine_config(topology: Topology, plan: Plan):
    """EngineConfig for one replica of `plan`."""
    from nemodeploy.engine.config import EngineConfig

    if plan.cache is None:
        raise LaunchError(f"{topology.name}: {plan.reason}")
    cache = plan.cache
    directory = model_dir(topology)
    dtype = engine_dtype(plan)
    check_quantized_checkpoint(plan, directory)
    check_mamba_state_dtype(plan, directory)
    return EngineConfig(
        model=str(directory),
        dtype=dtype,
        device="cpu" if plan.accelerator == "cpu" else "cuda",
        block_size=cache.block_size,
        num_kv_blocks=cache.num_kv_blocks,
        num_mamba_slots=cache.num_mamba_slots,
        max_num_seqs=cache.max_num_seqs,
        max_num_batched_tokens=max(cache.max_num_batched_tokens, 1 + cache.speculative_tokens),
        max_model_len=cache.max_model_len,
        speculative_tokens=cache.speculative_tokens,
        max_queue=max(4 * cache.max_num_seqs, 16),
        kv_cache_dtype=kv_cache_dtype(plan, dtype),
        prefix_caching=cache.prefix_caching,
        mamba_checkpoint_interval=cache.mamba_checkpoint_interval,
        num_mamba_checkpoints=cache.num_mamba_checkpoints,
        thinking_budget=topology.serving.thinking_budget,
        default_thinking=topology.serving.reasoning == "on",
        served_model_name=topology.model.id or directory.name,
    )
