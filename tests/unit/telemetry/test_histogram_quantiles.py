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
