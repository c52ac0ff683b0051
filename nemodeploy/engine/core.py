"""LLMEngine: the step loop. Schedule, execute, then turn tokens into outputs and finish requests.

Single-threaded by design; `async_engine.AsyncEngine` runs it on a background thread.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.executor import Executor, ExecutorDead, LocalExecutor, StepResult
from nemodeploy.engine.latency import LatencyStats, RequestClock
from nemodeploy.engine.protocol import EngineStats, GenerationRequest, RequestOutput, TokenLogprob
from nemodeploy.engine.scheduler import Scheduler, SeqChunk, Sequence
from nemodeploy.engine.tokenizer import OutputText, Tokenizer

log = logging.getLogger(__name__)

MAX_FAILED_STEPS = 3  # model steps failing in a row: the executor is broken, not a request


class LLMEngine:
    def __init__(self, config: EngineConfig, executor: Executor | None = None, tokenizer: Tokenizer | None = None):
        self.config = config
        self.tokenizer = tokenizer or Tokenizer(config.model)
        self.executor = executor or LocalExecutor(config)
        allocated = self.executor.cache_info()
        if (allocated["num_kv_blocks"], allocated["num_mamba_slots"]) != (config.num_kv_blocks, config.num_mamba_slots):
            raise ValueError(f"the executor allocated {allocated}, the scheduler would hand out "
                             f"{config.num_kv_blocks} KV blocks and {config.num_mamba_slots} Mamba slots")
        self.checkpoint_bytes = allocated.get("checkpoint_bytes", 0)
        self.scheduler = Scheduler(config)
        self._seeds = random.Random(config.seed)
        self._seqs: dict[str, Sequence] = {}
        self._texts: dict[str, OutputText] = {}
        self._matchers: dict[str, object] = {}  # request id -> llguidance matcher of its grammar
        self.latency = LatencyStats()
        self._clocks: dict[str, RequestClock] = {}
        self._structured = None  # StructuredOutput, built with the first guided request
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.draft_tokens_total = 0
        self.accepted_tokens_total = 0
        self.finished_total: Counter[str] = Counter()
        self.failed_steps = 0  # model steps failed in a row

    # -- requests ------------------------------------------------------------

    def add_request(self, request: GenerationRequest) -> None:
        """Queue a request; raises ValueError / RequestTooLong (400) or QueueFull (429)."""
        if request.request_id in self._seqs:
            raise ValueError(f"duplicate request id {request.request_id}")
        params = request.sampling
        if params.thinking_budget is None:
            params.thinking_budget = self.config.thinking_budget
        params.validate()
        if request.thinking and params.thinking_budget is not None and self.tokenizer.think_close_id is None:
            raise ValueError("a thinking budget needs a single </think> token in the tokenizer")
        if request.thinking and params.thinking_budget == 0:
            request.prompt_token_ids = [*request.prompt_token_ids, self.tokenizer.think_close_id]
            request.thinking = False
        self.scheduler.check(request)
        matcher = self._grammar(params.guided) if params.guided else None
        seed = params.seed if params.seed is not None else self._seeds.getrandbits(63)
        seq = Sequence(request, seed)
        self.scheduler.add(seq)
        self._seqs[seq.request_id] = seq
        self._texts[seq.request_id] = OutputText(self.tokenizer, params.stop, request.thinking)
        if matcher is not None:
            self._matchers[seq.request_id] = matcher
        self._clocks[seq.request_id] = RequestClock(self.latency)

    def _grammar(self, guided: dict):
        from nemodeploy.engine.structured import StructuredOutput

        if self._structured is None:
            self._structured = StructuredOutput(self.tokenizer.hf)
        return self._structured.matcher(guided)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Stop a request now; its blocks and Mamba slot are free when this returns."""
        seq = self._seqs.get(request_id)
        if seq is None:
            return None
        return self._finish(seq, "abort", [], "", "", seq.num_output)

    def has_unfinished(self) -> bool:
        return bool(self._seqs)

    # -- one step ------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """One step. An error in one request's own work (masks, grammar, detokenizing) fails that
        request; an error in the batched model step fails the requests of that step. Either way
        the engine serves on, unless MAX_FAILED_STEPS steps in a row fail, or the executor says it is
        dead (a rank is gone): then it is broken."""
        step = self.scheduler.schedule()
        if not step.chunks and not step.released:
            return []
        outputs: list[RequestOutput] = []
        for chunk in list(step.chunks):
            self._clocks[chunk.request_id].on_scheduled()
            if chunk.sample:
                try:
                    self._constrain(self._seqs[chunk.request_id], chunk)
                except Exception as exc:
                    outputs.append(self._fail(chunk.request_id, exc))
                    step.chunks.remove(chunk)
        if not step.chunks and not step.released:
            return outputs
        try:
            results = self.executor.execute(step)
        except ExecutorDead:
            raise
        except Exception as exc:
            self.failed_steps += 1
            if self.failed_steps >= MAX_FAILED_STEPS:
                raise
            return outputs + [self._fail(chunk.request_id, exc) for chunk in step.chunks]
        self.failed_steps = 0
        for chunk in step.chunks:
            seq = self._seqs[chunk.request_id]
            result = results.get(chunk.request_id, StepResult())
            try:
                self.scheduler.advance(seq, chunk, result.tokens, result.drafts)
                if chunk.sample:
                    outputs.append(self._emit(seq, chunk, result.tokens, result.logprobs))
            except Exception as exc:
                outputs.append(self._fail(chunk.request_id, exc))
        return outputs

    def _fail(self, request_id: str, exc: Exception) -> RequestOutput:
        """End a request the engine could not serve; its blocks and slot are free again."""
        log.error("request %s failed", request_id, exc_info=exc)
        seq = self._seqs[request_id]
        self._texts[request_id] = OutputText(self.tokenizer, [], False)  # its text state may be what broke
        out = self._finish(seq, "error", [], "", "", seq.num_output)
        out.error = f"the engine failed this request ({type(exc).__name__}); the server log has the details"
        return out

    def _constrain(self, seq: Sequence, chunk: SeqChunk) -> None:
        """The masks of the next token: EOS and stop ids before min_tokens, the grammar once the answer began."""
        params = seq.sampling
        if seq.num_output < params.min_tokens:
            chunk.banned_token_ids = sorted({*self.tokenizer.eos_token_ids, *params.stop_token_ids})
        matcher = self._matchers.get(seq.request_id)
        if matcher is not None and not seq.thinking:
            chunk.allowed_bitmask = self._structured.bitmask(matcher)

    def _emit(self, seq: Sequence, chunk: SeqChunk, tokens: list[int],
              logprobs: list[TokenLogprob] | None = None) -> RequestOutput:
        if seq.num_output == len(tokens):  # the first output: the prompt is prefilled
            self.prompt_tokens_total += seq.prompt_len
        if chunk.num_drafts:
            drafts = chunk.token_ids[-chunk.num_drafts :]
            self.draft_tokens_total += len(drafts)
            self.accepted_tokens_total += next((i for i, (t, d) in enumerate(zip(tokens, drafts)) if t != d),
                                               min(len(tokens), len(drafts)))
        text = self._texts[seq.request_id]
        emitted: list[int] = []
        reasoning = content = ""
        reason = None
        for token in tokens:
            emitted.append(token)
            was_thinking = text.thinking
            if not was_thinking and seq.request_id in self._matchers:
                self._matchers[seq.request_id].consume_token(token)
            r, c = text.add(token)
            reasoning, content = reasoning + r, content + c
            if was_thinking and text.thinking:
                seq.reasoning_tokens += 1
            seq.thinking = text.thinking
            reason = self._finish_reason(seq, token, len(emitted), len(tokens), text)
            if reason:
                break
        self.generation_tokens_total += len(emitted)
        self._clocks[seq.request_id].on_tokens(len(emitted))
        logprobs = logprobs[: len(emitted)] if logprobs is not None else None
        if reason is None and self._over_thinking_budget(seq):
            reason = self._force_think_close(seq, text, emitted)
            if logprobs is not None:  # the engine's choice, not the model's: probability 1
                logprobs.append(TokenLogprob(emitted[-1], 0.0))
        if reason:
            discarded = max(len(tokens) - len(emitted), 0)  # accepted past a stop: never shown
            out = self._finish(seq, reason, emitted, reasoning, content, seq.num_output - discarded)
        else:
            out = RequestOutput(seq.request_id, emitted, content, reasoning, prompt_tokens=seq.prompt_len,
                                completion_tokens=seq.num_output)
        out.logprobs = logprobs
        return out

    def _finish_reason(self, seq: Sequence, token: int, i: int, n: int, text: OutputText) -> str | None:
        params = seq.sampling
        if text.stopped or token in params.stop_token_ids:
            return "stop"
        if not params.ignore_eos and token in self.tokenizer.eos_token_ids:
            return "stop"
        if seq.num_output - (n - i) >= params.max_tokens:
            return "length"
        return None

    def _over_thinking_budget(self, seq: Sequence) -> bool:
        budget = seq.sampling.thinking_budget
        return seq.thinking and budget is not None and seq.reasoning_tokens >= budget

    def _force_think_close(self, seq: Sequence, text: OutputText, emitted: list[int]) -> str | None:
        """The budget is spent: append `</think>` as the next output token (fed next step)."""
        close = self.tokenizer.think_close_id
        seq.token_ids.append(close)
        seq.drafts = []  # they were proposed for a different next token
        text.add(close)
        seq.thinking = False
        emitted.append(close)
        self.generation_tokens_total += 1
        return "length" if seq.num_output >= seq.sampling.max_tokens else None

    def _finish(
        self, seq: Sequence, reason: str, emitted: list[int], reasoning: str, content: str, completion_tokens: int
    ) -> RequestOutput:
        text = self._texts.pop(seq.request_id)
        del self._seqs[seq.request_id]
        self._matchers.pop(seq.request_id, None)
        self._clocks.pop(seq.request_id).on_finished()
        self.scheduler.finish(seq)
        self.finished_total[reason] += 1
        reasoning_tail, content_tail = text.finish()  # held back: partial UTF-8, a stop prefix that never completed
        reasoning, content = reasoning + reasoning_tail, content + content_tail
        return RequestOutput(seq.request_id, emitted, content, reasoning, finished=True, finish_reason=reason,
                             prompt_tokens=seq.prompt_len, completion_tokens=completion_tokens)

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(
            num_requests_running=len(s.running),
            num_requests_waiting=len(s.waiting),
            kv_blocks_total=s.blocks.num_blocks,
            kv_blocks_free=s.blocks.num_free,
            mamba_slots_total=s.slots.num_slots,
            mamba_slots_free=s.slots.num_free,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            spec_decode_num_draft_tokens=self.draft_tokens_total,
            spec_decode_num_accepted_tokens=self.accepted_tokens_total,
            requests_finished_total=dict(self.finished_total),
            prefix_cache_queries=s.prefix_queries,
            prefix_cache_hits=s.prefix_hits,
            mamba_checkpoints_used=s.checkpoints.num_used,
            mamba_checkpoints_total=s.checkpoints.num_checkpoints,
            mamba_checkpoint_bytes=self.checkpoint_bytes,
            latency=self.latency,
        )
