"""Success/failure as Linkerd's default response classes decide it."""

from __future__ import annotations

import pytest

from nodeagent.protocol.classify import GRPC_NONZERO_FAILS, Outcome, classify, outcome_label


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "success"),
        (204, "success"),
        (301, "success"),
        (404, "success"),
        (429, "success"),
        (499, "success"),
        (500, "failure"),
        (503, "failure"),
        (599, "failure"),
    ],
)
def test_http_status(status: int, outcome: str) -> None:
    result = classify(status)
    assert result.outcome == outcome
    assert result.basis == "http"


@pytest.mark.parametrize("code", [2, 4, 13, 14, 15])
def test_grpc_failure_codes(code: int) -> None:
    assert classify(200, grpc_status=code).outcome is Outcome.FAILURE


@pytest.mark.parametrize("code", [0, 1, 3, 5, 6, 7, 8, 9, 10, 11, 12, 16])
def test_grpc_caller_side_codes_count_as_success_by_default(code: int) -> None:
    assert classify(200, grpc_status=code).success


def test_strict_grpc_mode_fails_every_non_zero_code() -> None:
    assert classify(200, grpc_status=5, grpc_failure_codes=GRPC_NONZERO_FAILS).outcome == "failure"
    assert classify(200, grpc_status=0, grpc_failure_codes=GRPC_NONZERO_FAILS).success


def test_grpc_status_decides_over_http_status_when_present() -> None:
    assert classify(200, grpc_status=14).basis == "grpc"
    assert not classify(503).success  # a gRPC call failed by a proxy before grpc-status


def test_reset_and_missing_response_fail() -> None:
    assert classify(200, grpc_status=0, stream_failed=True).basis == "stream"
    assert not classify(200, stream_failed=True).success
    missing = classify(None)
    assert (missing.outcome, missing.basis) == (Outcome.FAILURE, "no-response")


def test_the_data_planes_label_agrees_with_classify_everywhere() -> None:
    """outcome_label (what every observed request is labelled with) is classify's outcome."""
    for status in (None, 100, 101, 200, 204, 301, 404, 499, 500, 503, 599, 600):
        for grpc_status in (None, *range(17)):
            for failed in (False, True):
                want = classify(status, grpc_status=grpc_status, stream_failed=failed)
                got = outcome_label(status, grpc_status=grpc_status, stream_failed=failed)
                assert got == want.outcome.value, (status, grpc_status, failed)
