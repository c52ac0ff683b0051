"""Cache bookkeeping: paged KV blocks for attention layers and Mamba state slots.

A Nemotron-H sequence holds two kinds of cache. Attention layers keep K/V per token,
so it grows: it lives in fixed-size pages (blocks) listed in the sequence's block
table. Mamba layers keep one constant-size conv + SSM state whatever the length,
so a sequence needs exactly one slot in the Mamba pool from its first prefill chunk
to its end. Both are plain free lists here; the tensors live in the model's cache.
"""

from __future__ import annotations

from collections import deque


class OutOfBlocks(RuntimeError):
    pass


class BlockAllocator:
    """Free list of KV pages, shared by all attention layers (page i is page i in each)."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def grow(self, table: list[int], num_tokens: int) -> None:
        """Append pages to `table` until it covers `num_tokens` tokens."""
        need = self.blocks_for(num_tokens) - len(table)
        if need > len(self._free):
            raise OutOfBlocks(f"need {need} KV blocks, {len(self._free)} free")
        for _ in range(max(need, 0)):
            table.append(self._free.popleft())

    def shrink(self, table: list[int], num_tokens: int) -> None:
        """Return the pages of `table` past `num_tokens` tokens (rejected draft positions)."""
        keep = self.blocks_for(num_tokens)
        while len(table) > keep:
            self._free.append(table.pop())

    def release(self, table: list[int]) -> None:
        self._free.extend(table)
        table.clear()


class MambaSlotPool:
    """Free list of Mamba state slots: one per running sequence."""

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self._free: deque[int] = deque(range(num_slots))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def acquire(self) -> int:
        if not self._free:
            raise OutOfBlocks("no free Mamba slot")
        return self._free.popleft()

    def release(self, slot: int) -> None:
        self._free.append(slot)
