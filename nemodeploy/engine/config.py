"""EngineConfig: every count the engine allocates from, in one plain dataclass.

The planner fills these from a plan's memory budget (KV blocks and Mamba slots are
counts, not fractions of free memory), so nothing here is guessed at start-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


KV_CACHE_DTYPES = ("auto", "fp8")


@dataclass
class EngineConfig:
    model: str  # HF-style checkpoint directory
    dtype: str = "float32"  # "float32" | "bfloat16" | "float16"
    device: str = "cpu"
    block_size: int = 16  # tokens per KV page
    num_kv_blocks: int = 512  # pages per attention layer
    num_mamba_slots: int = 16  # Mamba conv+SSM states: one per running sequence
    max_num_seqs: int = 16  # running sequences per step (never above num_mamba_slots)
    max_num_batched_tokens: int = 512  # tokens per step: the chunked-prefill budget
    max_model_len: int = 4096  # prompt + completion
    speculative_tokens: int = 0  # MTP draft tokens per step; 0 turns speculative decoding off
    max_queue: int = 64  # waiting requests before new ones are rejected (HTTP 429)
    thinking_budget: int | None = None  # default reasoning-token budget for requests that give none
    default_thinking: bool | None = None  # chat requests that don't say: thinking on / off (None: the template's default)
    served_model_name: str | None = None  # name on /v1/models; defaults to the directory name
    seed: int = 0  # for sampling requests that give no seed
    kv_cache_dtype: str = "auto"  # "auto": the model dtype; "fp8": FP8 E4M3 with per-tensor scales (engine/model/attention.py)
    prefix_caching: bool = False  # share KV pages and Mamba checkpoints between requests with a common prefix
    mamba_checkpoint_interval: int = 256  # tokens between Mamba state checkpoints (a multiple of block_size)
    num_mamba_checkpoints: int = 32  # Mamba states kept for cached prefixes (each costs one slot's bytes)

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.num_kv_blocks < 1:
            raise ValueError("block_size and num_kv_blocks must be positive")
        if self.num_mamba_slots < 1 or self.max_num_seqs < 1:
            raise ValueError("num_mamba_slots and max_num_seqs must be positive")
        if self.speculative_tokens < 0:
            raise ValueError("speculative_tokens must be non-negative")
        if self.max_num_batched_tokens < 1 + self.speculative_tokens:
            raise ValueError("max_num_batched_tokens must fit one decode step (1 + speculative_tokens)")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, not {self.kv_cache_dtype!r}")
        if self.max_queue < 0:
            raise ValueError("max_queue must be non-negative")
        if self.prefix_caching and (self.mamba_checkpoint_interval < self.block_size
                                    or self.mamba_checkpoint_interval % self.block_size):
            raise ValueError(f"mamba_checkpoint_interval ({self.mamba_checkpoint_interval}) must be a multiple of "
                             f"block_size ({self.block_size})")
        if self.num_mamba_checkpoints < 0:
            raise ValueError("num_mamba_checkpoints must be non-negative")
        self.max_num_seqs = min(self.max_num_seqs, self.num_mamba_slots)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "EngineConfig":
        """Build from a plan's engine section; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown engine settings: {', '.join(unknown)}")
        return cls(**values)
