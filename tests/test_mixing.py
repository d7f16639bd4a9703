from collections import Counter

import pytest

from retune.data.batching import batch_indices
from retune.data.mixing import epoch_indices, plan, shares
from retune.errors import UsageError


def _measured(sizes, counts, seed=0, epoch=0, draws=10_000, batch=16):
    """Shares among the first `draws` examples the loop would see (epochs in its shuffled batch order)."""
    seen: list[int] = []
    while len(seen) < draws:
        pairs = epoch_indices(sizes, counts, seed, epoch)
        for b in batch_indices([1] * len(pairs), batch, seed, epoch):
            seen += [pairs[i][0] for i in b]
        epoch += 1
    tally = Counter(seen[:draws])
    return [tally[t] / draws for t in range(len(sizes))]


@pytest.mark.parametrize(
    "strategy,weights,temperature",
    [("fractions", [5, 3, 2], 2.0), ("proportional", [None] * 3, 2.0), ("temperature", [None] * 3, 3.0)],
)
def test_measured_shares_match_declared_over_10k_draws(strategy, weights, temperature):
    sizes = [6000, 250, 1800]  # the small task must be oversampled under fractions
    p = plan(sizes, strategy, weights, temperature, epoch_size=4000)
    measured = _measured(sizes, p.counts)
    for declared, got in zip(p.shares, measured, strict=True):
        assert abs(declared - got) < 0.02, (strategy, p.shares, measured)
    if strategy == "fractions":
        assert p.shares == pytest.approx([0.5, 0.3, 0.2])
        assert any("repeated" in w for w in p.warnings)


def test_temperature_flattens_and_t1_is_proportional():
    sizes = [9000, 1000]
    assert shares(sizes, "temperature", temperature=1.0) == pytest.approx(shares(sizes, "proportional"))
    assert shares(sizes, "temperature", temperature=2.0) == pytest.approx([0.75, 0.25])


def test_proportional_default_epoch_is_every_example_once():
    sizes = [7, 3]
    p = plan(sizes, "auto")
    pairs = epoch_indices(sizes, p.counts, seed=1, epoch=0)
    assert sorted(pairs) == [(0, i) for i in range(7)] + [(1, i) for i in range(3)]


def test_fresh_draw_each_epoch_same_for_same_seed():
    sizes, counts = [100, 100], [30, 30]
    e0, e1 = epoch_indices(sizes, counts, 5, 0), epoch_indices(sizes, counts, 5, 1)
    assert e0 == epoch_indices(sizes, counts, 5, 0)  # what makes resume exact
    assert e0 != e1 and e0 != epoch_indices(sizes, counts, 6, 0)


def test_oversample_repeats_whole_permutations_or_caps():
    sizes = [10, 1000]
    over = plan(sizes, "fractions", [1, 1], epoch_size=100)
    assert over.counts == [50, 50]
    tally = Counter(i for t, i in epoch_indices(sizes, over.counts, 0, 0) if t == 0)
    assert set(tally.values()) == {5}  # each of the 10 examples exactly 5 times
    capped = plan(sizes, "fractions", [1, 1], epoch_size=100, oversample=False, names=["tiny", "big"])
    assert capped.counts == [10, 50] and "tiny" in capped.warnings[0] and "capped" in capped.warnings[0]


def test_fractions_need_weights():
    with pytest.raises(UsageError, match="needs a weight"):
        plan([3, 4], "fractions", [1, None])
