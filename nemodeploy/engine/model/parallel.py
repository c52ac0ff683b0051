"""Tensor / expert / pipeline parallel plumbing: who holds which slice, and the one collective we use.

All ranks form one group (torch.distributed's default group) of size
`world_size = max(tp_size, ep_size)`; tp_size and ep_size are each 1 or world_size. With
tp_size > 1 attention, Mamba and the MLPs are sharded by heads / channels and their
row-parallel outputs are summed by all-reduce. With ep_size > 1 the routed experts are
partitioned; every rank runs its experts on all tokens and the partial sums are combined by
the same all-reduce (dispatch and combine by all-reduce: simple, no all-to-all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelConfig:
    tp_rank: int = 0
    tp_size: int = 1
    ep_rank: int = 0
    ep_size: int = 1

    def __post_init__(self) -> None:
        world = self.world_size
        if self.tp_size not in (1, world) or self.ep_size not in (1, world):
            raise ValueError(f"tp_size {self.tp_size} and ep_size {self.ep_size} must each be 1 or {world}")
        if not (0 <= self.tp_rank < self.tp_size and 0 <= self.ep_rank < self.ep_size):
            raise ValueError(f"rank out of range in {self}")

    @property
    def world_size(self) -> int:
        return max(self.tp_size, self.ep_size)


@dataclass(frozen=True)
class PipelineStage:
    """The backbone layers [start, end) one pipeline stage holds, of the model's `num_layers`.

    The first stage also holds the embedding, the last the final norm, lm_head and MTP head.
    Each stage keeps the Mamba state and KV cache of its own layers only.
    """

    start: int
    end: int
    num_layers: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= self.num_layers:
            raise ValueError(f"stage layers [{self.start}, {self.end}) are not within the model's {self.num_layers}")

    @classmethod
    def whole(cls, num_layers: int) -> "PipelineStage":
        return cls(0, num_layers, num_layers)

    @property
    def first(self) -> bool:
        return self.start == 0

    @property
    def last(self) -> bool:
        return self.end == self.num_layers

    @property
    def layers(self) -> range:
        return range(self.start, self.end)


def all_reduce(x: torch.Tensor, num_partials: int) -> torch.Tensor:
    """Sum `x` over the ranks when `num_partials` (> 1) of them hold partial sums of it.

    Replicated work (e.g. attention when only experts are parallel) passes 1 and is left alone.
    """
    if num_partials > 1:
        dist.all_reduce(x)
    return x


def shard_range(total: int, rank: int, size: int) -> tuple[int, int]:
    """(start, count) of the items `rank` holds when `total` items are split over `size` ranks.

    When there are fewer items than ranks (KV heads or Mamba groups under wide TP), each
    rank holds the one item its query heads / Mamba heads read, i.e. items are replicated.
    """
    if total >= size:
        if total % size:
            raise ValueError(f"{total} items do not split evenly over {size} ranks")
        return rank * total // size, total // size
    if size % total:
        raise ValueError(f"{size} ranks do not share {total} items evenly")
    return rank * total // size, 1


Reader = Callable[[str], object]
"""Returns a checkpoint tensor or a lazy safetensors slice (anything indexable by slices)."""


def rows_loader(name: str, dim: int, segments: list[tuple[int, int]]) -> Callable[[Reader], torch.Tensor]:
    """Load the concatenation of `segments` ((start, count) along `dim`) of checkpoint tensor `name`."""

    def load(read: Reader) -> torch.Tensor:
        tensor = read(name)
        lead = (slice(None),) * dim
        return torch.cat([tensor[lead + (slice(s, s + c),)] for s, c in segments], dim=dim)

    return load


def set_loader(param: torch.nn.Parameter, loader: Callable[[Reader], torch.Tensor]) -> None:
    """Params without a loader are read whole under their own module path."""
    param.weight_loader = loader
