"""From a topology and its plan to the embedded engine's EngineConfig.

The plan sized the caches; this only carries its counts over and finds the
checkpoint directory. Nothing is downloaded: the embedded engine serves a local
HF-format directory, or the tiny model it writes itself.
"""

from __future__ import annotations

from pathlib import Path

from nemodeploy.plan.types import Plan
from nemodeploy.topology.schema import Topology

TINY_MODEL = "nemotron-h-tiny"
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


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


def engine_config(topology: Topology, plan: Plan):
    """EngineConfig for one replica of `plan`."""
    from nemodeploy.engine.config import EngineConfig

    if plan.cache is None:
        raise LaunchError(f"{topology.name}: {plan.reason}")
    dtype = TORCH_DTYPES.get(plan.precision.weights)
    if dtype is None:
        raise LaunchError(
            f"the embedded engine runs bf16 and fp32 checkpoints, not {plan.precision.weights}; "
            "set model.precision to bf16 or use engine.kind: vllm"
        )
    cache = plan.cache
    directory = model_dir(topology)
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
        thinking_budget=topology.serving.thinking_budget,
        default_thinking=topology.serving.reasoning == "on",
        served_model_name=topology.model.id or directory.name,
    )
