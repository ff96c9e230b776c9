"""`quantiles` (several at once, used by stat over thousands of rows) answers exactly what
`quantile` answers for each q."""

from __future__ import annotations

import random

from nodemesh.histogram import bucket_index, quantile, quantiles


def test_quantiles_equal_quantile_for_each_q_in_any_order() -> None:
    rng = random.Random(18)
    qs = (0.99, 0.5, 0.95, 0.0, 1.0, 0.5)
    for _ in range(300):
        counts: dict[int, int] = {}
        for _ in range(rng.randrange(1, 40)):
            index = bucket_index(rng.expovariate(1 / 5000))
            counts[index] = counts.get(index, 0) + rng.randrange(1, 50)
        assert quantiles(counts, qs) == [quantile(counts, q) for q in qs]
    assert quantiles({}, qs) == [None] * len(qs)
