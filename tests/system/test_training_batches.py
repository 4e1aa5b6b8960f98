"""specdec.training.batches: the batches of an epoch, fixed-count (random order) and length-grouped within a
token budget (`--batch-tokens`)."""

from __future__ import annotations

import pytest
import torch

from specdec.training.batches import batch_sizes_by_length, epoch_batches, epoch_order, rank_indices


def _lengths(n: int, seed: int) -> list:
    """Sequence lengths like ShareGPT first turns under a 512-token cut: skewed, 8..512, many ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.exp(torch.randn(n, generator=g) * 0.6 + 5.3)
    return x.clamp(8, 512).round().long().tolist()


def test_fixed_count_batches_are_the_epoch_order_cut_in_full_batches():
    # the default must keep every earlier run's data order: batch p = epoch_order[p*B:(p+1)*B]
    for n, b in ((37, 8), (40, 8), (8, 8), (5, 1)):
        order = epoch_order(n, 3, 1, 2)
        batches = epoch_batches(n, b, 3, 1, 2)
        assert len(batches) == n // b
        for p, batch in enumerate(batches):
            assert torch.equal(batch, order[p * b : (p + 1) * b])


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("budget", [1, 300, 2048, 100000])
def test_batch_sizes_fit_the_budget(world, budget):
    lengths = sorted(_lengths(501, 0))
    sizes = batch_sizes_by_length(lengths, budget, world)
    assert all(s % world == 0 and s >= world for s in sizes)
    assert len(lengths) - sum(sizes) < world  # only a remainder of fewer than `world` sequences is dropped
    start = 0
    for s in sizes:
        longest = lengths[start + s - 1]
        assert s * longest <= budget or s == world  # over budget only when `world` sequences already are
        # greedy: one more group of `world` would not have fit (or none was left)
        more = start + s + world
        assert more > len(lengths) or (s + world) * lengths[more - 1] > budget
        start += s


def test_batch_sizes_refuse_bad_settings():
    with pytest.raises(ValueError, match="batch_tokens"):
        batch_sizes_by_length([1, 2], 0)
    with pytest.raises(ValueError, match="world"):
        batch_sizes_by_length([1, 2], 10, world=0)
    assert batch_sizes_by_length([], 10) == []
    assert batch_sizes_by_length([5], 10, world=2) == []  # one sequence for two processes: none


def test_token_batches_cover_the_epoch_once_with_little_padding():
    n, budget = 1000, 2048
    lengths = _lengths(n, 1)
    lens = torch.tensor(lengths)
    seen_orders = []
    counts = set()
    for epoch in range(3):
        batches = epoch_batches(n, 8, 5, 1, epoch, lengths, budget)
        counts.add(len(batches))
        every = torch.cat(batches)
        assert sorted(every.tolist()) == list(range(n))  # each sequence exactly once
        padded = sum(len(b) * int(lens[b].max()) for b in batches)
        assert all(len(b) * int(lens[b].max()) <= budget or len(b) == 1 for b in batches)
        assert lens.sum().item() / padded > 0.97
        seen_orders.append(every.tolist())
        # batch order is shuffled: not sorted by length
        firsts = [int(lens[b].max()) for b in batches]
        assert firsts != sorted(firsts)
    assert len(counts) == 1  # the same number of steps every epoch (the schedule needs it)
    assert len({tuple(o) for o in seen_orders}) == 3
    # random fixed-count batches of the same lengths waste far more
    rand = epoch_batches(n, 8, 5, 1, 0)
    assert lens.sum().item() / sum(len(b) * int(lens[b].max()) for b in rand) < 0.85


def test_token_batches_shuffle_ties_and_are_reproducible():
    lengths = [10] * 40 + [20] * 40
    a = epoch_batches(80, 8, 0, 1, 0, lengths, 100)
    b = epoch_batches(80, 8, 0, 1, 0, lengths, 100)
    c = epoch_batches(80, 8, 0, 1, 1, lengths, 100)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert {len(x) for x in a} == {10, 5}
    # the members of a batch of equal lengths differ between epochs (ties in the epoch's random order)
    assert {tuple(sorted(x.tolist())) for x in a} != {tuple(sorted(x.tolist())) for x in c}
    with pytest.raises(ValueError, match="length of each"):
        epoch_batches(80, 8, 0, 1, 0, lengths[:-1], 100)


def test_token_batches_split_evenly_over_processes():
    lengths = _lengths(203, 2)
    batches = epoch_batches(203, 8, 0, 1, 0, lengths, 1500, world=2)
    assert sum(len(b) for b in batches) >= 202
    for b in batches:
        shares = [rank_indices(b, r, 2) for r in range(2)]
        assert len(shares[0]) == len(shares[1]) >= 1
        assert sorted(shares[0] + shares[1]) == sorted(b.tolist())
