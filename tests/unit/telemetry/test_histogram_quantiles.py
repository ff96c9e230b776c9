"""`quantiles` and `quantiles_ms` (several at once, from cumulative counts: used by stat over
thousands of rows) answer exactly what `quantile` answers for each q."""

from __future__ import annotations

import random

import pytest

from nodemesh.histogram import MAX_VALUE_US, bucket_index, quantile, quantiles, quantiles_ms


def test_quantiles_equal_quantile_for_each_q_in_any_order() -> None:
    rng = random.Random(18)
    qs = (0.99, 0.5, 0.95, 0.0, 1.0, 0.5)
    for _ in range(300):
        counts: dict[int, int] = {}
        for _ in range(rng.randrange(1, 40)):
            index = bucket_index(rng.expovariate(1 / 5000))
            counts[index] = counts.get(index, 0) + rng.randrange(1, 50)
        if rng.random() < 0.1:
            counts[bucket_index(MAX_VALUE_US)] = 1
        one_by_one = [quantile(counts, q) for q in qs]
        assert quantiles(counts, qs) == one_by_one
        assert quantiles_ms(counts, qs) == tuple(
            None if us is None else us / 1000 for us in one_by_one
        )
    assert quantiles({}, qs) == [None] * len(qs)
    assert quantiles_ms({}, qs) == (None,) * len(qs)
    assert quantiles({7: 1}, ()) == []


def test_a_quantile_outside_0_1_is_refused() -> None:
    for q in (-0.1, 1.5):
        with pytest.raises(ValueError):
            quantiles({7: 1}, (q,))
        with pytest.raises(ValueError):
            quantiles_ms({7: 1}, (0.5, q))


def test_stats_three_quantiles_equal_quantile() -> None:
    """Stat's quantiles (0.5, 0.95, 0.99: one walk that stops at the third rank) over
    histograms of one bucket to many, one sample to millions, the top bucket included."""
    rng = random.Random(9)
    qs = (0.5, 0.95, 0.99)
    for _ in range(2000):
        counts: dict[int, int] = {}
        for _ in range(rng.choice([1, 1, 2, 3, 5, 20, 60])):
            index = bucket_index(rng.expovariate(1 / rng.choice([50, 5000, 500_000])))
            counts[index] = counts.get(index, 0) + rng.choice([1, 1, 2, 7, 100, 10**6])
        if rng.random() < 0.05:
            counts[bucket_index(MAX_VALUE_US)] = rng.randrange(1, 3)
        expected = tuple(None if (us := quantile(counts, q)) is None else us / 1000 for q in qs)
        assert quantiles_ms(counts, qs) == expected, counts
    assert quantiles_ms({}, qs) == (None, None, None)
    assert quantiles_ms({5: 0}, qs) == (None, None, None)
