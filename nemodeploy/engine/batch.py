"""Per-step batch metadata: what each sequence of a flattened continuous batch brings and holds.

Layout: the batch is the tokens of B sequences laid end to end. The first `num_decodes`
sequences are "recurrent" rows: each brings exactly `decode_query_len` tokens (1 for decode,
k+1 for a speculative verify) and already has cached state; the Mamba layers run them
with the token-by-token update ops. The remaining sequences are prefill rows (a whole
prompt or one chunk of it), run with the varlen conv + chunked SSD scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BatchMetadata:
    query_start_loc: torch.Tensor  # [B+1] int32, token offsets of each sequence
    seq_lens: torch.Tensor  # [B] int32, cached + new tokens
    context_lens: torch.Tensor  # [B] int32, tokens already cached before this step
    block_tables: torch.Tensor  # [B, max_blocks] int32, KV pages of each sequence
    slot_mapping: torch.Tensor  # [T] int64, flat KV cache slot (block * block_size + offset) per token
    mamba_slots: torch.Tensor  # [B] int64, Mamba state slot of each sequence
    has_initial_state: torch.Tensor  # [B] bool, context_lens > 0
    logits_indices: torch.Tensor  # [B] int64, each sequence's last token
    num_decodes: int = 0
    decode_query_len: int = 1
    save_spec_states: bool = False  # verify step: keep per-token Mamba states for HybridCache.commit

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])

    @property
    def num_decode_tokens(self) -> int:
        return self.num_decodes * self.decode_query_len

    @property
    def num_prefills(self) -> int:
        return int(self.mamba_slots.shape[0]) - self.num_decodes

    @property
    def prefill_query_start_loc(self) -> torch.Tensor:
        return self.query_start_loc[self.num_decodes :] - self.num_decode_tokens

    @classmethod
    def build(
        cls,
        query_lens: list[int],
        context_lens: list[int],
        block_tables: list[list[int]],
        mamba_slots: list[int],
        block_size: int,
        device: torch.device | str = "cpu",
        num_decodes: int = 0,
        save_spec_states: bool = False,
    ) -> "BatchMetadata":
        """Metadata for one step; the recurrent rows (decode / verify) must come first."""
        if not (len(query_lens) == len(context_lens) == len(block_tables) == len(mamba_slots)):
            raise ValueError("query_lens, context_lens, block_tables and mamba_slots differ in length")
        decode_query_len = query_lens[0] if num_decodes else 1
        for i in range(num_decodes):
            if query_lens[i] != decode_query_len or context_lens[i] == 0:
                raise ValueError("recurrent rows need one common query length and cached state")
        if save_spec_states and not num_decodes:
            raise ValueError("save_spec_states needs recurrent (verify) rows")
        starts = [0]
        slots: list[int] = []
        for q, c, table in zip(query_lens, context_lens, block_tables):
            if len(table) * block_size < q + c:
                raise ValueError(f"block table of {len(table)} blocks cannot hold {q + c} tokens")
            starts.append(starts[-1] + q)
            slots += [table[p // block_size] * block_size + p % block_size for p in range(c, c + q)]
        width = max(len(t) for t in block_tables)
        tables = [t + [0] * (width - len(t)) for t in block_tables]

        def tensor(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device)

        return cls(
            query_start_loc=tensor(starts, torch.int32),
            seq_lens=tensor([q + c for q, c in zip(query_lens, context_lens)], torch.int32),
            context_lens=tensor(context_lens, torch.int32),
            block_tables=tensor(tables, torch.int32),
            slot_mapping=tensor(slots, torch.int64),
            mamba_slots=tensor(mamba_slots, torch.int64),
            has_initial_state=tensor([c > 0 for c in context_lens], torch.bool),
            logits_indices=tensor([s - 1 for s in starts[1:]], torch.int64),
            num_decodes=num_decodes,
            decode_query_len=decode_query_len,
            save_spec_states=save_spec_states,
        )
