"""Per-sample random seeds for training augmentation.

`SeededSampler` yields ``(index, seed)`` keys that the datasets compute with `item_with_seed`, so a sample's
augmentation depends on the run's seed, the epoch and the sample only: not on the DataLoader worker or DDP rank
that reads it, nor on whether the run was resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import RandomSampler, Sampler

__all__ = ["SeededSampler", "item_with_seed", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The random seed of dataset item `index` in `epoch` of a run seeded with `seed`."""
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % 2**63


def item_with_seed(key: int | tuple[int, int], get: Callable[[int], Any]) -> Any:
    """``get(key)`` for a plain index; for an ``(index, seed)`` key, ``get(index)`` with torch's CPU generator
    seeded with `seed` and restored afterwards."""
    if isinstance(key, tuple):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get(index)
    return get(key)


class SeededSampler(Sampler):
    """``(index, sample_seed(seed, epoch, index))`` for the indices of `inner`, in its order. `set_epoch` also
    reorders `inner`: a `DistributedSampler`'s epoch, or a `RandomSampler` generator reseeded from seed and epoch."""

    def __init__(self, inner: Sampler, seed: int) -> None:
        self.inner, self.seed, self.epoch = inner, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(self.epoch)
        elif isinstance(self.inner, RandomSampler) and self.inner.generator is not None:
            self.inner.generator.manual_seed(self.seed * 100003 + self.epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.inner:
            yield int(index), sample_seed(self.seed, self.epoch, int(index))

    def __len__(self) -> int:
        return len(self.inner)
