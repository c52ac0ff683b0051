"""Cache bookkeeping: paged KV blocks for attention layers, Mamba state slots, and the prefix cache.

A Nemotron-H sequence holds two kinds of cache. Attention layers keep K/V per token,
so it grows: it lives in fixed-size pages (blocks) listed in the sequence's block
table. Mamba layers keep one constant-size conv + SSM state whatever the length,
so a sequence needs exactly one slot in the Mamba pool from its first prefill chunk
to its end. The tensors live in the model's cache; here are only their free lists.

Prefix caching, hybrid: a full page whose tokens are computed is registered under the
hash of the whole prefix up to its end (a chain hash), so a later request with the same
prefix shares the page instead of recomputing it (pages are reference counted; a freed
page keeps its content until it is handed out again, the least recently freed first).
Pages alone are not enough for a recurrent model: the Mamba state after the prefix is
needed too, and it cannot be rebuilt from pages. So the state is also copied into a
checkpoint every `mamba_checkpoint_interval` tokens of a prefill (`CheckpointPool`,
least recently used evicted first), and a request resumes from the longest prefix
whose pages and checkpoint are both cached.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence

Hash = bytes


class OutOfBlocks(RuntimeError):
    pass


def chain_hashes(token_ids: Sequence[int], num_tokens: int, block_size: int, known: list[Hash]) -> list[Hash]:
    """Extend `known` (hashes of the leading full blocks) to every full block of `token_ids[:num_tokens]`.

    Block i's hash covers tokens [0, (i + 1) * block_size): it hashes block i's tokens with
    block i - 1's hash, so equal hashes mean equal prefixes (a 128-bit BLAKE2 digest).
    """
    for i in range(len(known), num_tokens // block_size):
        parent = known[-1] if known else b""
        tokens = array("q", token_ids[i * block_size : (i + 1) * block_size]).tobytes()
        known.append(hashlib.blake2b(parent + tokens, digest_size=16).digest())
    return known


class BlockAllocator:
    """KV pages shared by all attention layers (page i is page i in each), reference counted."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # oldest first
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, Hash] = {}
        self._block_of: dict[Hash, int] = {}

    @property
    def num_free(self) -> int:
        """Pages no sequence holds (cached ones among them are reclaimed when needed)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._block_of)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def grow(self, table: list[int], num_tokens: int) -> None:
        """Append pages to `table` until it covers `num_tokens` tokens."""
        need = self.blocks_for(num_tokens) - len(table)
        if need > len(self._free):
            raise OutOfBlocks(f"need {need} KV blocks, {len(self._free)} free")
        for _ in range(max(need, 0)):
            table.append(self._take())

    def shrink(self, table: list[int], num_tokens: int) -> None:
        """Return the pages of `table` past `num_tokens` tokens (rejected draft positions)."""
        keep = self.blocks_for(num_tokens)
        while len(table) > keep:
            self._drop(table.pop())

    def release(self, table: list[int]) -> None:
        # the tail first, so that a prefix's last pages are reclaimed before its first ones
        for block in reversed(table):
            self._drop(block)
        table.clear()

    def cached_prefix(self, hashes: Sequence[Hash]) -> list[int]:
        """Pages holding the longest run of the leading `hashes`."""
        blocks = []
        for h in hashes:
            block = self._block_of.get(h)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def share(self, table: list[int], blocks: Sequence[int]) -> None:
        """Append cached pages to an empty or fully shared `table`, taking a reference on each."""
        for block in blocks:
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1
            table.append(block)

    def register(self, block: int, h: Hash) -> None:
        """`block` is full and computed and holds the prefix hashed `h`; the first page to register it wins."""
        if h not in self._block_of and block not in self._hash_of:
            self._block_of[h] = block
            self._hash_of[block] = h

    def _take(self) -> int:
        block, _ = self._free.popitem(last=False)
        h = self._hash_of.pop(block, None)
        if h is not None:
            del self._block_of[h]
        self._refs[block] = 1
        return block

    def _drop(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free[block] = None


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


class CheckpointPool:
    """Mamba state checkpoints, each found by the hash of the prefix it ends.

    A checkpoint is `reserve`d when a step is scheduled to write it and `publish`ed once the
    step has run, so no request of the same step can resume from a state not yet written.
    """

    def __init__(self, num_checkpoints: int):
        self.num_checkpoints = num_checkpoints
        self._lru: OrderedDict[Hash, int] = OrderedDict()  # least recently used first
        self._free = list(range(num_checkpoints))

    @property
    def num_used(self) -> int:
        return len(self._lru)

    def find(self, h: Hash) -> int | None:
        index = self._lru.get(h)
        if index is not None:
            self._lru.move_to_end(h)
        return index

    def reserve(self) -> int | None:
        """A checkpoint to write: a free one, else the least recently used (evicted); None without any."""
        if self._free:
            return self._free.pop()
        if self._lru:
            return self._lru.popitem(last=False)[1]
        return None

    def publish(self, h: Hash, index: int) -> None:
        if h in self._lru:  # written twice in one step by sequences with the same prefix
            self._free.append(index)
        else:
            self._lru[h] = index

    def cancel(self, index: int) -> None:
        self._free.append(index)
