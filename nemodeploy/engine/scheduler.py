"""Continuous batching: which sequences run this step, and how many tokens each feeds.

Every step the scheduler spends a token budget (max_num_batched_tokens): first on
running sequences (a decode feeds its last token plus any MTP drafts; a sequence
still prefilling feeds its next chunk), then on admitting waiting requests in
arrival order. A request is admitted only when a Mamba slot is free and the KV
blocks for its whole prompt are free, so a prefill never stalls half-way. When a
running sequence cannot get a block, the newest running sequence is preempted: its blocks and
slot go back and it is recomputed later from its tokens (prompt + output so far).

With prefix caching (see block_manager), an admitted request first takes the longest
cached prefix that ends at a Mamba checkpoint and starts computing after it; prefill
chunks are cut at every checkpoint boundary (a multiple of mamba_checkpoint_interval),
and a chunk that ends on one writes the Mamba state there into a checkpoint.

The step's decision (`SchedulerOutput`) is plain data, so an executor can send the
same one to every rank.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from nemodeploy.engine.block_manager import BlockAllocator, CheckpointPool, Hash, MambaSlotPool, chain_hashes
from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.protocol import GenerationRequest, QueueFull, RequestTooLong, SamplingParams


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """One request's tokens and its claim on the caches."""

    def __init__(self, request: GenerationRequest, seed: int):
        self.request_id = request.request_id
        self.sampling = request.sampling
        self.seed = seed
        self.prompt_len = len(request.prompt_token_ids)
        self.token_ids = list(request.prompt_token_ids)
        self.num_computed = 0  # leading tokens whose KV / Mamba state is in the cache
        self.block_table: list[int] = []
        self.slot: int | None = None
        self.drafts: list[int] = []  # MTP proposals for the tokens after token_ids[-1]
        self.thinking = request.thinking  # inside an open thinking section
        self.reasoning_tokens = 0
        self.status = Status.WAITING
        self.block_hashes: list[Hash] = []  # prefix hashes of the leading full blocks (prefix caching)
        self.num_registered = 0  # leading blocks registered in the prefix cache
        self.saving: tuple[Hash, int] | None = None  # the checkpoint this step writes, published after it

    @property
    def num_output(self) -> int:
        return len(self.token_ids) - self.prompt_len

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.prompt_len :]

    @property
    def pending(self) -> int:
        """Known tokens not yet fed through the model (1 for a decoding sequence)."""
        return len(self.token_ids) - self.num_computed

    def max_new_this_step(self) -> int:
        """Tokens this sequence may produce before max_tokens or the thinking budget needs the engine."""
        limit = self.sampling.max_tokens - self.num_output
        if self.thinking and self.sampling.thinking_budget is not None:
            limit = min(limit, self.sampling.thinking_budget - self.reasoning_tokens)
        return max(limit, 1)


@dataclass
class SeqChunk:
    """What every rank needs to run one sequence for one step."""

    request_id: str
    token_ids: list[int]  # a prefill chunk, or [last token] + drafts
    start_pos: int  # position of token_ids[0]; 0 means a fresh Mamba state
    block_table: list[int]
    slot: int
    num_drafts: int  # trailing entries of token_ids that are drafts to verify
    sample: bool  # the chunk reaches the last known token: produce the next one(s)
    next_token: int | None  # mid-prefill: the token after the chunk (the MTP head reads it)
    max_new: int  # keep at most this many tokens (max_tokens / thinking budget left); the rest rolls back
    sampling: SamplingParams
    seed: int
    restore_checkpoint: int | None = None  # copy this Mamba checkpoint into the slot before the step
    save_checkpoint: int | None = None  # copy the slot's state into this checkpoint after the step
    history: list[int] | None = None  # prompt + output so far, for penalties (only when the request has some)
    prompt_len: int = 0
    banned_token_ids: list[int] = field(default_factory=list)  # set by the engine core (min_tokens)
    allowed_bitmask: list[int] | None = None  # set by the engine core (a grammar's next-token mask)


@dataclass
class SchedulerOutput:
    chunks: list[SeqChunk] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # requests gone: ranks drop their per-request state


class Scheduler:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.blocks = BlockAllocator(config.num_kv_blocks, config.block_size)
        self.slots = MambaSlotPool(config.num_mamba_slots)
        self.checkpoints = CheckpointPool(config.num_mamba_checkpoints if config.prefix_caching else 0)
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of those, tokens found (not computed again)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._released: list[str] = []

    # -- requests in and out -------------------------------------------------

    def check(self, request: GenerationRequest) -> None:
        total = len(request.prompt_token_ids) + request.sampling.max_tokens
        if not request.prompt_token_ids:
            raise RequestTooLong("the prompt is empty")
        if total > self.config.max_model_len:
            raise RequestTooLong(
                f"prompt ({len(request.prompt_token_ids)} tokens) plus max_tokens "
                f"({request.sampling.max_tokens}) exceeds the context length {self.config.max_model_len}"
            )
        if self.blocks.blocks_for(total + self.config.speculative_tokens) > self.blocks.num_blocks:
            raise RequestTooLong(f"{total} tokens need more KV blocks than the cache holds")

    def add(self, seq: Sequence) -> None:
        """Queue a sequence; max_queue bounds the requests that will have to wait for a free place."""
        free_places = self.config.max_num_seqs - len(self.running)
        if len(self.waiting) >= self.config.max_queue + max(free_places, 0):
            raise QueueFull(f"the waiting queue is full ({self.config.max_queue} requests)")
        self.waiting.append(seq)

    def finish(self, seq: Sequence) -> None:
        """Free the sequence's blocks and slot at once (finished, aborted or disconnected)."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            self._release(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED

    def _release(self, seq: Sequence) -> None:
        self.blocks.release(seq.block_table)
        if seq.slot is not None:
            self.slots.release(seq.slot)
            seq.slot = None
        if seq.saving is not None:
            self.checkpoints.cancel(seq.saving[1])
            seq.saving = None
        self._released.append(seq.request_id)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.num_computed = seq.num_registered = 0
        seq.drafts = []
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)

    # -- one step ------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        for seq in list(self.running):
            if budget <= 0:
                break
            if seq.status is not Status.RUNNING:  # preempted to make room for an older one
                continue
            chunk = self._running_chunk(seq, budget)
            if chunk is not None:
                out.chunks.append(chunk)
                budget -= len(chunk.token_ids)
        while self.waiting and budget > 0 and self._can_admit(self.waiting[0]):
            seq = self.waiting.popleft()
            seq.slot = self.slots.acquire()
            restore = self._resume_from_cache(seq) if self.config.prefix_caching else None
            n = self._cut(seq, min(seq.pending, budget))
            # the whole prompt up front, so the prefill never waits for blocks half-way
            self.blocks.grow(seq.block_table, max(len(seq.token_ids), self._blocks_needed(seq, n, 0)))
            seq.status = Status.RUNNING
            self.running.append(seq)
            chunk = self._chunk(seq, n, drafts=[])
            chunk.restore_checkpoint = restore
            out.chunks.append(chunk)
            budget -= len(chunk.token_ids)
        out.released, self._released = self._released, []
        return out

    def _can_admit(self, seq: Sequence) -> bool:
        return (
            len(self.running) < self.config.max_num_seqs
            and self.slots.num_free > 0
            and self.blocks.blocks_for(len(seq.token_ids) + self.config.speculative_tokens + 1) <= self.blocks.num_free
        )

    def _running_chunk(self, seq: Sequence, budget: int) -> SeqChunk | None:
        if seq.pending > 1:  # prefilling, recomputing, or a token the engine forced in
            n, drafts = self._cut(seq, min(seq.pending, budget)), []
        else:  # verify all drafts or none: the model runs verify rows with one common length
            n, drafts = 1, seq.drafts if len(seq.drafts) < budget and seq.sampling.speculative else []
        need = self._blocks_needed(seq, n, len(drafts))
        while self.blocks.blocks_for(need) - len(seq.block_table) > self.blocks.num_free:
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return None
        self.blocks.grow(seq.block_table, need)
        return self._chunk(seq, n, drafts)

    def _blocks_needed(self, seq: Sequence, n: int, num_drafts: int) -> int:
        """Tokens the block table must cover this step.

        A sampling step with speculation also needs room for the MTP draft chain: its
        attention writes up to speculative_tokens - 1 positions past the new token.
        """
        need = seq.num_computed + n + num_drafts
        if seq.num_computed + n == len(seq.token_ids):
            need += self.config.speculative_tokens
        return need

    # -- prefix caching ------------------------------------------------------

    def _resume_from_cache(self, seq: Sequence) -> int | None:
        """Share the longest cached prefix that ends at a Mamba checkpoint; the checkpoint to restore.

        At least the last token is computed again: its logits give the next token.
        """
        bs, per = self.config.block_size, self.config.mamba_checkpoint_interval // self.config.block_size
        usable = (len(seq.token_ids) - 1) // bs
        chain_hashes(seq.token_ids, usable * bs, bs, seq.block_hashes)
        blocks = self.blocks.cached_prefix(seq.block_hashes[:usable])
        self.prefix_queries += len(seq.token_ids)
        for k in range(len(blocks) // per, 0, -1):
            index = self.checkpoints.find(seq.block_hashes[k * per - 1])
            if index is not None:
                self.blocks.share(seq.block_table, blocks[: k * per])
                seq.num_computed = k * per * bs
                self.prefix_hits += seq.num_computed
                return index
        return None

    def _cut(self, seq: Sequence, n: int) -> int:
        """A prefill chunk ends at the next checkpoint boundary, so that its Mamba state can be kept."""
        if not self.config.prefix_caching:
            return n
        interval = self.config.mamba_checkpoint_interval
        boundary = (seq.num_computed // interval + 1) * interval
        return min(n, boundary - seq.num_computed)

    def _checkpoint_to_write(self, seq: Sequence, end: int) -> int | None:
        """Reserve a checkpoint for the state after `end` tokens, if that is a boundary not yet kept."""
        if not self.config.prefix_caching or end % self.config.mamba_checkpoint_interval:
            return None
        bs = self.config.block_size
        h = chain_hashes(seq.token_ids, end, bs, seq.block_hashes)[end // bs - 1]
        if self.checkpoints.find(h) is not None:
            return None
        index = self.checkpoints.reserve()
        if index is not None:
            seq.saving = (h, index)
        return index

    def _cache_computed(self, seq: Sequence) -> None:
        """Register the newly computed full blocks and publish the checkpoint the step wrote."""
        bs = self.config.block_size
        hashes = chain_hashes(seq.token_ids, seq.num_computed, bs, seq.block_hashes)
        for i in range(seq.num_registered, min(seq.num_computed // bs, len(seq.block_table))):
            self.blocks.register(seq.block_table[i], hashes[i])
        seq.num_registered = max(seq.num_registered, seq.num_computed // bs)
        if seq.saving is not None:
            self.checkpoints.publish(*seq.saving)
            seq.saving = None

    def _chunk(self, seq: Sequence, n: int, drafts: list[int]) -> SeqChunk:
        start = seq.num_computed
        sample = start + n == len(seq.token_ids)
        return SeqChunk(
            request_id=seq.request_id,
            token_ids=seq.token_ids[start : start + n] + drafts,
            start_pos=start,
            block_table=list(seq.block_table),
            slot=seq.slot,
            num_drafts=len(drafts),
            sample=sample,
            next_token=None if sample else seq.token_ids[start + n],
            max_new=seq.max_new_this_step(),
            sampling=seq.sampling,
            seed=seq.seed,
            save_checkpoint=None if drafts else self._checkpoint_to_write(seq, start + n),
            history=list(seq.token_ids) if sample and seq.sampling.penalized else None,
            prompt_len=seq.prompt_len,
        )

    def advance(self, seq: Sequence, chunk: SeqChunk, accepted: list[int], drafts: list[int]) -> None:
        """Record a step's result: cache now covers the fed tokens up to the accepted drafts."""
        fed = len(chunk.token_ids) - chunk.num_drafts + max(len(accepted) - 1, 0)
        seq.num_computed += fed if chunk.sample else len(chunk.token_ids)
        seq.token_ids.extend(accepted)
        seq.drafts = drafts
        self.blocks.shrink(seq.block_table, len(seq.token_ids))
        if self.config.prefix_caching:
            self._cache_computed(seq)
