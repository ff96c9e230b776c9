"""The log-linear histogram keeps its stated error bound and merges exactly."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodemesh.histogram import (
    MAX_INDEX,
    MAX_VALUE_US,
    RELATIVE_ERROR,
    LatencyHistogram,
    bucket_bounds,
    bucket_index,
    nearest_rank,
    quantile,
)

values = st.integers(min_value=0, max_value=10**10)
quantiles = st.floats(min_value=0.0, max_value=1.0)


def exact(samples: list[int], q: float) -> int:
    return sorted(samples)[nearest_rank(q, len(samples)) - 1]


@given(values)
def test_a_value_lies_in_its_bucket_and_the_bucket_is_narrow(v: int) -> None:
    low, high = bucket_bounds(bucket_index(v))
    assert low <= v <= high
    assert (high - low) / 2 <= RELATIVE_ERROR * low


def test_buckets_tile_the_range_without_gaps() -> None:
    previous_high = -1
    for index in range(MAX_INDEX + 1):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1 and high >= low
        previous_high = high
    assert previous_high == MAX_VALUE_US


@given(st.lists(values, min_size=1, max_size=300), quantiles)
def test_quantile_within_the_stated_bound(samples: list[int], q: float) -> None:
    h = LatencyHistogram()
    for v in samples:
        h.record(v)
    truth = exact(samples, q)
    estimate = h.quantile(q)
    assert estimate is not None
    assert abs(estimate - truth) <= RELATIVE_ERROR * truth


@given(st.lists(values, max_size=100), st.lists(values, max_size=100))
def test_merge_equals_recording_everything(a: list[int], b: list[int]) -> None:
    ha, hb, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for v in a:
        ha.record(v)
        both.record(v)
    for v in b:
        hb.record(v)
        both.record(v)
    ha.merge(hb)
    assert ha.counts == both.counts and ha.total == both.total == len(a) + len(b)
    again = LatencyHistogram.from_sparse(*ha.to_sparse(), ha.sum_us)
    assert again.counts == both.counts


def test_small_values_are_exact_and_empty_is_none() -> None:
    assert quantile({}, 0.5) is None
    h = LatencyHistogram()
    for v in (5, 1, 3, 2, 4):
        h.record(v)
    assert [h.quantile(q) for q in (0, 0.2, 0.5, 0.99, 1)] == [1, 1, 3, 5, 5]


@pytest.mark.parametrize(
    ("buckets", "counts"),
    [([1, 2], [1]), ([1, 1], [1, 1]), ([MAX_INDEX + 1], [1]), ([3], [0])],
)
def test_from_sparse_refuses_garbage(buckets, counts) -> None:
    with pytest.raises(ValueError):
        LatencyHistogram.from_sparse(buckets, counts)


def test_quantile_outside_unit_interval_is_an_error() -> None:
    with pytest.raises(ValueError):
        quantile({1: 1}, 1.5)
