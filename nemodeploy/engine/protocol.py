"""What goes into the engine and what comes out: the contract between engine core and server.

Plain dataclasses, no torch, so the server and the tests can speak it without
touching the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    thinking_budget: int | None = None  # reasoning tokens before the engine closes the thinking section

    def validate(self) -> None:
        """Raise ValueError with an OpenAI-style message for an impossible request."""
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be non-negative")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be non-negative (0 disables it)")
        if self.thinking_budget is not None and self.thinking_budget < 0:
            raise ValueError("thinking_budget must be non-negative")


@dataclass
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    thinking: bool = False  # the prompt opened a thinking section (chat template with thinking on)


class QueueFull(RuntimeError):
    """The bounded waiting queue is full: the server answers 429."""


class RequestTooLong(ValueError):
    """Prompt plus max_tokens exceeds the engine's max_model_len: the server answers 400."""


@dataclass
class RequestOutput:
    """One increment for one request: the tokens decided since the last increment."""

    request_id: str
    token_ids: list[int]
    text: str  # content delta (after the thinking section when there is one)
    reasoning_text: str = ""  # reasoning delta, while the thinking section is open
    finished: bool = False
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class EngineStats:
    """Gauges and counters the server exports on /metrics (vLLM names where they mean the same)."""

    num_requests_running: int = 0
    num_requests_waiting: int = 0
    kv_blocks_total: int = 0
    kv_blocks_free: int = 0
    mamba_slots_total: int = 0
    mamba_slots_free: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    spec_decode_num_draft_tokens: int = 0
    spec_decode_num_accepted_tokens: int = 0
    requests_finished_total: dict[str, int] = field(default_factory=dict)
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, tokens resumed from the cache instead of computed
    mamba_checkpoints_used: int = 0
    mamba_checkpoints_total: int = 0
    mamba_checkpoint_bytes: int = 0  # device memory of the checkpoints on one rank
