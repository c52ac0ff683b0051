"""ModelRunner: the model and its cache on one device; runs one scheduled step.

Per step: lay the chunks out as one flattened batch (verify / decode rows first, as
the model's Mamba path wants), run the forward, pick tokens, and with speculation on:
roll each verified sequence's Mamba state back to its accepted length
(`HybridCache.commit`), then draft the next tokens with the MTP head.

MTP drafting, for k speculative tokens:
  1. one MTP pass over the whole batch, at the same positions: position t gets the
     token after t (shifted input, with the step's new token at the last accepted
     position) and the main model's hidden state at t. This also fills the MTP layer's
     own KV cache for every position the main model just cached.
  2. k - 1 single-token passes per sampling sequence, each on the previous draft and
     the previous MTP hidden state, one position further.
Drafts are argmax picks; `sampler.verify` accepts them against the target next step.

A pipeline stage (`stage`) holds some layers and their cache only. A stage before the last
runs `forward_stage` (hidden states in, hidden states out); the last runs `execute` on the
previous stage's hidden states, decides the tokens and drafts (it holds the MTP head). With
speculation, a stage before the last keeps copies of its verify rows' per-token Mamba states
until the last stage's tokens say how many each sequence kept (`commit_stage`), before it runs
the sequence again.
"""

from __future__ import annotations

import torch

from nemodeploy.engine.batch import BatchMetadata
from nemodeploy.engine.cache import HybridCache, kv_bytes_per_block, mamba_bytes_per_slot
from nemodeploy.engine.config import EngineConfig
from nemodeploy.engine.executor import StepResult
from nemodeploy.engine.loader import load_model
from nemodeploy.engine.model.parallel import ParallelConfig, PipelineStage
from nemodeploy.engine.sampler import apply_masks, apply_penalties, make_generator, sample, token_logprobs, verify
from nemodeploy.engine.scheduler import SchedulerOutput, SeqChunk


class ModelRunner:
    def __init__(self, config: EngineConfig, parallel: ParallelConfig = ParallelConfig(),
                 stage: PipelineStage | None = None):
        self.config = config
        self.k = config.speculative_tokens
        self.device = torch.device(config.device)
        self.dtype = getattr(torch, config.dtype)
        self.kv_dtype = torch.float8_e4m3fn if config.kv_cache_dtype == "fp8" else self.dtype
        self.model = load_model(config.model, self.dtype, self.device, parallel, with_mtp=self.k > 0, stage=stage)
        self.stage = self.model.stage
        if self.k and self.stage.last and self.model.mtp is None:
            raise ValueError(f"{config.model} has no MTP layer (num_nextn_predict_layers = 0): "
                             "speculative decoding needs one; use speculative_tokens 0")
        self.cache = HybridCache(self.model.config, config.num_kv_blocks, config.block_size, config.num_mamba_slots,
                                 self.dtype, self.device, parallel, include_mtp=self.k > 0 and self.stage.last,
                                 num_spec_tokens=self.k, max_spec_seqs=config.max_num_seqs if self.k else 0,
                                 num_checkpoints=config.num_mamba_checkpoints if config.prefix_caching else 0,
                                 kv_dtype=self.kv_dtype, layers=self.stage.layers)
        self.parallel = parallel
        self._generators: dict[str, torch.Generator] = {}
        # a stage before the last, speculating: request id -> (slot, its verify row's per-token states)
        self._unverified: dict[str, tuple[int, tuple]] = {}

    def cache_info(self) -> dict[str, int]:
        c, layers = self.config, self.stage.layers
        slot_bytes = mamba_bytes_per_slot(self.model.config, self.dtype, self.parallel, layers)
        return {
            "num_kv_blocks": c.num_kv_blocks,
            "block_size": c.block_size,
            "num_mamba_slots": c.num_mamba_slots,
            "kv_bytes": c.num_kv_blocks * kv_bytes_per_block(self.model.config, c.block_size, self.kv_dtype,
                                                             self.parallel, include_mtp=self.k > 0 and self.stage.last,
                                                             layers=layers),
            "mamba_bytes": c.num_mamba_slots * slot_bytes,
            "checkpoint_bytes": (c.num_mamba_checkpoints if c.prefix_caching else 0) * slot_bytes,
        }

    def _is_recurrent(self, chunk: SeqChunk) -> bool:
        """Runs on the Mamba token-by-token path: cached state and the common verify length."""
        return chunk.start_pos > 0 and chunk.num_drafts == self.k and len(chunk.token_ids) == 1 + self.k

    def _generator(self, chunk: SeqChunk) -> torch.Generator:
        if chunk.request_id not in self._generators:
            self._generators[chunk.request_id] = make_generator(chunk.seed, self.device)
        return self._generators[chunk.request_id]

    def _batch(self, chunks: list[SeqChunk], num_decodes: int) -> BatchMetadata:
        return BatchMetadata.build(
            query_lens=[len(c.token_ids) for c in chunks],
            context_lens=[c.start_pos for c in chunks],
            block_tables=[c.block_table for c in chunks],
            mamba_slots=[c.slot for c in chunks],
            block_size=self.config.block_size,
            device=self.device,
            num_decodes=num_decodes,
            save_spec_states=bool(self.k and num_decodes),
        )

    def _forward(self, step: SchedulerOutput, hidden_in: torch.Tensor | None):
        """Run this rank's layers over the step: (chunks in batch order, their batch, input ids, hidden)."""
        recurrent = [c for c in step.chunks if self._is_recurrent(c)]
        chunks = recurrent + [c for c in step.chunks if not self._is_recurrent(c)]
        for c in chunks:
            if c.restore_checkpoint is not None:
                self.cache.restore_checkpoint(c.restore_checkpoint, c.slot)
        batch = self._batch(chunks, len(recurrent))
        input_ids = torch.tensor([t for c in chunks for t in c.token_ids], dtype=torch.long, device=self.device)
        if hidden_in is not None:
            hidden_in = hidden_in.to(self.device)
        return chunks, recurrent, batch, input_ids, self.model(input_ids, batch, self.cache, hidden_in)

    def _save_checkpoints(self, chunks: list[SeqChunk]) -> None:
        for c in chunks:
            if c.save_checkpoint is not None:
                self.cache.save_checkpoint(c.slot, c.save_checkpoint)

    @torch.inference_mode()
    def forward_stage(self, step: SchedulerOutput, hidden_in: torch.Tensor | None) -> torch.Tensor | None:
        """A stage before the last: the hidden states after its layers (on the CPU, to send on), None without chunks."""
        for request_id in step.released:
            self._unverified.pop(request_id, None)
        if not step.chunks:
            return None
        chunks, recurrent, _, _, hidden = self._forward(step, hidden_in)
        if self.k:
            for row, chunk in enumerate(recurrent):
                self._unverified[chunk.request_id] = (chunk.slot, self.cache.verify_states(row))
        self._save_checkpoints(chunks)
        return hidden.cpu()

    def commit_stage(self, num_kept: dict[str, int]) -> None:
        """A stage before the last: roll each verified sequence's Mamba state back to the tokens it kept."""
        for request_id, kept in num_kept.items():
            unverified = self._unverified.pop(request_id, None)
            if unverified is not None:
                self.cache.commit_saved(unverified[0], unverified[1], kept)

    @torch.inference_mode()
    def execute(self, step: SchedulerOutput, hidden_in: torch.Tensor | None = None) -> dict[str, StepResult]:
        """The step's tokens: on the whole model, or on the last stage from the previous stage's `hidden_in`."""
        for request_id in step.released:
            self._generators.pop(request_id, None)
        if not step.chunks:
            return {}
        chunks, recurrent, batch, input_ids, hidden = self._forward(step, hidden_in)

        starts = batch.query_start_loc.tolist()
        # logits only where tokens are decided: each sampling row's last known token and its drafts
        rows = {i: range(starts[i + 1] - 1 - c.num_drafts, starts[i + 1]) for i, c in enumerate(chunks) if c.sample}
        logits = self.model.compute_logits(hidden[[p for r in rows.values() for p in r]]) if rows else None
        results: dict[str, StepResult] = {c.request_id: StepResult() for c in chunks}
        at = 0
        for i, positions in rows.items():
            chunk, row_logits = chunks[i], logits[at : at + len(positions)]
            at += len(positions)
            params, gen = chunk.sampling, self._generator(chunk)
            decided = row_logits
            if chunk.history is not None:
                decided = apply_penalties(decided, params, chunk.history, chunk.prompt_len)
            if chunk.banned_token_ids or chunk.allowed_bitmask is not None:
                decided = apply_masks(decided, chunk.banned_token_ids, chunk.allowed_bitmask)
            if chunk.num_drafts:
                tokens = verify(decided, chunk.token_ids[-chunk.num_drafts :], params, gen)[: chunk.max_new]
            else:
                tokens = [sample(decided[0], params, gen)]
            results[chunk.request_id].tokens = tokens
            if params.logprobs is not None:
                results[chunk.request_id].logprobs = token_logprobs(row_logits[: len(tokens)], tokens, params.logprobs)

        if recurrent and self.k:
            kept = [len(results[c.request_id].tokens) for c in recurrent]
            self.cache.commit(batch.mamba_slots[: len(recurrent)], torch.tensor(kept, device=self.device))
        if self.k:
            self._draft(chunks, starts, input_ids, hidden, batch, results)
        self._save_checkpoints(chunks)
        return results

    def _draft(self, chunks: list[SeqChunk], starts: list[int], input_ids: torch.Tensor, hidden: torch.Tensor,
               batch: BatchMetadata, results: dict[str, StepResult]) -> None:
        """MTP drafts for every sampling sequence (see the module docstring)."""
        shifted = input_ids.roll(-1)  # the token after each position; row ends are set below
        last_pos: list[int] = []  # flat index of each sampling row's last accepted position
        for i, chunk in enumerate(chunks):
            if chunk.sample:
                tokens = results[chunk.request_id].tokens
                at = starts[i + 1] - 1 - chunk.num_drafts + len(tokens) - 1
                shifted[at] = tokens[-1]
                last_pos.append(at)
            else:
                shifted[starts[i + 1] - 1] = chunk.next_token
        mtp_hidden = self.model.mtp_forward(shifted, hidden, batch, self.cache)
        sampling = [c for c in chunks if c.sample]
        if not sampling:
            return
        h = mtp_hidden[last_pos]
        draft = self.model.compute_logits(h).argmax(dim=-1)
        drafts = [draft]
        # position of the new token of each sampling row: the chain continues from there
        positions = [c.start_pos + len(c.token_ids) - c.num_drafts + len(results[c.request_id].tokens) - 1
                     for c in sampling]
        for j in range(1, self.k):
            chain = BatchMetadata.build(
                query_lens=[1] * len(sampling),
                context_lens=[p + j - 1 for p in positions],
                block_tables=[c.block_table for c in sampling],
                mamba_slots=[c.slot for c in sampling],
                block_size=self.config.block_size,
                device=self.device,
                num_decodes=len(sampling),
            )
            h = self.model.mtp_forward(draft, h, chain, self.cache)
            draft = self.model.compute_logits(h).argmax(dim=-1)
            drafts.append(draft)
        proposals = torch.stack(drafts, dim=1).tolist()
        for chunk, row in zip(sampling, proposals):
            results[chunk.request_id].drafts = row
