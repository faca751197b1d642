"""Per-sample augmentation seeds: a sample's seed depends on the run's seed, the epoch and the sample only, the
order on (seed, epoch), and computing an item leaves torch's generator as it was."""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler, RandomSampler

from nbsrc.data.seeding import SeededSampler, item_with_seed, sample_seed


def _keys(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_keys_depend_on_seed_epoch_and_index_only():
    data = range(10)
    sampler = SeededSampler(RandomSampler(data, generator=torch.Generator().manual_seed(0)), seed=7)
    epoch0, epoch1 = _keys(sampler, 0), _keys(sampler, 1)
    assert sorted(i for i, _ in epoch0) == list(range(10))
    assert all(seed == sample_seed(7, 0, i) for i, seed in epoch0)
    assert [i for i, _ in epoch0] != [i for i, _ in epoch1]  # reshuffled
    assert _keys(sampler, 0) == epoch0  # an epoch is reproduced exactly (a resumed run)
    fresh = SeededSampler(RandomSampler(data, generator=torch.Generator().manual_seed(0)), seed=7)
    assert _keys(fresh, 1) == epoch1


def test_ranks_share_the_single_process_seeds():
    data = range(10)
    ranks = [
        SeededSampler(DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=7), seed=7) for r in (0, 1)
    ]
    keys = [key for sampler in ranks for key in _keys(sampler, 3)]
    assert sorted(i for i, _ in keys) == list(range(10))
    assert all(seed == sample_seed(7, 3, i) for i, seed in keys)


def test_item_with_seed_is_reproducible_and_restores_the_generator():
    def draw(index):
        return index, torch.rand(3)

    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = item_with_seed((4, 123), draw)
    assert torch.equal(torch.get_rng_state(), state)
    b = item_with_seed((4, 123), draw)
    assert a[0] == 4 and torch.equal(a[1], b[1])
    assert not torch.equal(item_with_seed((4, 124), draw)[1], a[1])
    assert item_with_seed(5, lambda i: i) == 5  # a plain index passes through
