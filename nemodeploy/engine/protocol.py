"""What goes into the engine and what comes out: the contract between engine core and server.

Plain dataclasses, no torch, so the server and the tests can speak it without
touching the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort", "error"]  # error: the engine failed this request


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
    presence_penalty: float = 0.0  # subtracted once from the logit of every token already in the output
    frequency_penalty: float = 0.0  # subtracted per occurrence in the output
    repetition_penalty: float = 1.0  # divides positive / multiplies negative logits of prompt and output tokens
    min_tokens: int = 0  # EOS and stop_token_ids are masked until this many tokens are out
    logprobs: int | None = None  # None: none; k: the chosen token's log-probability and the k most likely
    guided: dict | None = None  # a grammar for the answer: {"json_schema": {...}} or {"lark": "..."}

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)

    @property
    def speculative(self) -> bool:
        """MTP drafts apply: every draft position would need its own penalties, masks and logprobs."""
        return not (self.penalized or self.min_tokens or self.logprobs is not None or self.guided)

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
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise ValueError("seed must be a 64-bit integer")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2]")
        if not 0 < self.repetition_penalty <= 2:
            raise ValueError("repetition_penalty must be in (0, 2]")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError("min_tokens must be between 0 and max_tokens")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError("top_logprobs must be between 0 and 20")


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
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # the most likely tokens, best first


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
    logprobs: list[TokenLogprob] | None = None  # one per token in token_ids, when the request asked
    error: str | None = None  # with finish_reason "error": what failed (the engine serves on)


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
    latency: Any = None  # latency.LatencyStats: queue, TTFT, inter-token, end-to-end histograms
