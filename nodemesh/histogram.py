"""Mergeable log-linear latency histogram shared by the agent (which fills it) and the control
plane (which merges and queries it); the bucket scheme is part of the telemetry wire format.

Values are integer microseconds. Values below 128 us get a bucket each (exact). Above, every
power-of-two octave [2^k, 2^(k+1)) is split into 64 equal sub-buckets, so a bucket is never wider
than 1/64 of its lower bound, and its midpoint is within 1/128 of any value in it.

Error bound: for every q, `quantile(counts, q)` is within RELATIVE_ERROR = 1/128 (0.79 %) of the
exact nearest-rank quantile of the recorded samples, i.e. of sorted(samples)[nearest_rank(q, n) -
1]; exact below 128 us. Values above MAX_VALUE_US (about 12.7 days) are clamped to it.

Interface: `bucket_index(us)`, `bucket_bounds(index)`, `bucket_value(index)`,
`nearest_rank(q, n)`, `quantile(counts, q)`, `quantiles(counts, qs)`, `quantiles_ms` (pure, over
any index -> count mapping),
`merge_into(target, counts)`, and `LatencyHistogram` (record, merge, quantile, to_sparse /
from_sparse for the protobuf `Histogram` message's parallel arrays).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from itertools import accumulate

SUB_BUCKET_BITS = 6
SUB_BUCKETS = 1 << SUB_BUCKET_BITS  # 64 sub-buckets per octave
EXACT_BELOW = 2 * SUB_BUCKETS  # 128: one bucket per microsecond below this
RELATIVE_ERROR = 1 / (2 * SUB_BUCKETS)  # 1/128
MAX_VALUE_US = (1 << 40) - 1


def bucket_index(us: int | float) -> int:
    """The bucket a latency of `us` microseconds falls in (negative counts as 0)."""
    v = min(max(int(us), 0), MAX_VALUE_US)
    if v < EXACT_BELOW:
        return v
    shift = v.bit_length() - (SUB_BUCKET_BITS + 1)
    mantissa = v >> shift  # in [64, 128)
    return SUB_BUCKETS * (shift + 1) + (mantissa - SUB_BUCKETS)


MAX_INDEX = bucket_index(MAX_VALUE_US)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest and largest microsecond value (inclusive) of bucket `index`."""
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"bucket index {index} outside 0..{MAX_INDEX}")
    if index < EXACT_BELOW:
        return index, index
    shift = index // SUB_BUCKETS - 1
    mantissa = index % SUB_BUCKETS + SUB_BUCKETS
    low = mantissa << shift
    return low, low + (1 << shift) - 1


def bucket_value(index: int) -> float:
    """The value reported for a sample in bucket `index`: its midpoint."""
    low, high = bucket_bounds(index)
    return (low + high) / 2


def _bucket_values() -> list[float]:
    return [bucket_value(i) for i in range(MAX_INDEX + 1)]


def nearest_rank(q: float, n: int) -> int:
    """1-based rank of the q-quantile among n samples (the nearest-rank definition)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    return min(n, max(1, math.ceil(q * n)))


def quantile(counts: Mapping[int, int], q: float) -> float | None:
    """The q-quantile in microseconds of a histogram's counts, or None when it is empty."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = nearest_rank(q, total)
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen >= rank:
            return bucket_value(index)
    raise AssertionError("unreachable: rank <= total")


def quantiles(counts: Mapping[int, int], qs: Iterable[float]) -> list[float | None]:
    """`quantile(counts, q)` for each q (in any order), from the buckets' cumulative counts.

    Called once per row of a Stat (10,000 rows for `stat pod` at 10,000 pods): the buckets are
    sorted and their counts accumulated by C code, and each rank found by bisection (the first
    bucket whose cumulative count reaches it), with no Python step per bucket."""
    asked = qs if isinstance(qs, (list, tuple)) else list(qs)
    total = sum(counts.values())
    if total <= 0 or not asked:
        return [None] * len(asked)
    keys = sorted(counts)
    cumulative = list(accumulate(map(counts.__getitem__, keys)))
    return [_at_rank(keys, cumulative, total, q) for q in asked]


def _at_rank(keys: list[int], cumulative: list[int], total: int, q: float) -> float:
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside [0, 1]")
    index = keys[bisect_left(cumulative, min(total, max(1, math.ceil(q * total))))]
    return _VALUES[index] if 0 <= index <= MAX_INDEX else bucket_value(index)


def quantiles_ms(counts: Mapping[int, int], qs: tuple[float, ...]) -> tuple[float | None, ...]:
    """`quantiles(counts, qs)` in milliseconds (each value / 1000), for a Stat's rows: as
    `quantiles`, written out (no call per quantile; 30,000 of them for `stat pod`)."""
    if not counts:
        return _NONE_OF.get(len(qs)) or (None,) * len(qs)
    if qs in _CHECKED:
        return _three_ms(counts, qs)
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} outside [0, 1]")
    keys = sorted(counts)
    cumulative = list(accumulate(map(counts.__getitem__, keys)))
    total = cumulative[-1]
    if total <= 0:
        return (None,) * len(qs)
    out = []
    ceil, values = math.ceil, _VALUES_MS
    for q in qs:
        rank = ceil(q * total)  # nearest_rank, inline
        index = keys[bisect_left(cumulative, total if rank > total else rank if rank > 1 else 1)]
        out.append(values[index] if 0 <= index <= MAX_INDEX else bucket_value(index) / 1000)
    return tuple(out)


def _three_ms(counts: Mapping[int, int], qs: tuple[float, ...]) -> tuple[float | None, ...]:
    """`quantiles_ms` of three quantiles in [0, 1], ascending (`_CHECKED`): one walk over the
    sorted buckets that stops at the third rank (Stat's rows have a few buckets each: sorting
    them and walking them costs less than accumulating them and bisecting three times; half
    the time of a cold Stat pod's quantiles)."""
    total = sum(counts.values())
    if total <= 0:
        return (None, None, None)
    keys = sorted(counts)
    if keys[0] < 0 or keys[-1] > MAX_INDEX:
        return tuple(None if v is None else v / 1000 for v in quantiles(counts, qs))
    q1, q2, q3 = qs
    ceil, values = math.ceil, _VALUES_MS
    # nearest_rank: ceil(q * total) is at most total for q <= 1, and at least 1.
    r1, r2, r3 = ceil(q1 * total) or 1, ceil(q2 * total) or 1, ceil(q3 * total) or 1
    walk = iter(keys)
    seen = 0
    for index in walk:
        seen += counts[index]
        if seen >= r1:
            break
    first = values[index]
    while seen < r2:
        index = next(walk)
        seen += counts[index]
    second = values[index]
    while seen < r3:
        index = next(walk)
        seen += counts[index]
    return (first, second, values[index])


_CHECKED = {(0.5, 0.95, 0.99)}  # three quantiles known to be in [0, 1], ascending
_NONE_OF = {n: (None,) * n for n in range(1, 5)}


def merge_into(target: dict[int, int], counts: Mapping[int, int]) -> None:
    for index, n in counts.items():
        target[index] = target.get(index, 0) + n


class LatencyHistogram:
    __slots__ = ("counts", "total", "sum_us")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.sum_us = 0

    def record(self, us: int | float, n: int = 1) -> None:
        index = bucket_index(us)
        self.counts[index] = self.counts.get(index, 0) + n
        self.total += n
        self.sum_us += max(int(us), 0) * n

    def merge(self, other: LatencyHistogram) -> None:
        merge_into(self.counts, other.counts)
        self.total += other.total
        self.sum_us += other.sum_us

    def quantile(self, q: float) -> float | None:
        return quantile(self.counts, q)

    def to_sparse(self) -> tuple[list[int], list[int]]:
        indices = sorted(self.counts)
        return indices, [self.counts[i] for i in indices]

    @classmethod
    def from_sparse(
        cls, buckets: Iterable[int], counts: Iterable[int], sum_us: int = 0
    ) -> LatencyHistogram:
        """Rebuild from the wire; raise ValueError on mismatched, repeated or invalid buckets."""
        indices, values = list(buckets), list(counts)
        if len(indices) != len(values):
            raise ValueError(f"{len(indices)} buckets but {len(values)} counts")
        h = cls()
        for index, n in zip(indices, values, strict=True):
            if not 0 <= index <= MAX_INDEX:
                raise ValueError(f"bucket index {index} outside 0..{MAX_INDEX}")
            if n <= 0:
                raise ValueError(f"bucket {index} has count {n}")
            if index in h.counts:
                raise ValueError(f"bucket {index} repeated")
            h.counts[index] = n
            h.total += n
        h.sum_us = sum_us
        return h


_VALUES = _bucket_values()  # bucket_value(i) for every index (~2,240 floats)
_VALUES_MS = [v / 1000 for v in _VALUES]
