"""Success or failure of a finished request, following Linkerd's default response classes.

What Linkerd's proxy does when no ServiceProfile overrides it (linkerd/linkerd2-proxy,
``linkerd/app/core/src/classify.rs``, read for this module):

* HTTP: a response whose status is a server error (500-599) is a failure; every other
  status, 4xx included, is a success.
* gRPC: the ``grpc-status`` of a trailers-only response or of the trailers decides. Only
  UNKNOWN (2), DEADLINE_EXCEEDED (4), INTERNAL (13), UNAVAILABLE (14) and DATA_LOSS (15)
  are failures; OK and the "the caller asked for something wrong" codes (CANCELLED,
  INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...) count as successes. A gRPC response
  that ends without any ``grpc-status`` counts as OK. The first Linkerd 2 proxies (2018,
  when the ``classification`` label appeared) failed every non-zero code; pass
  ``grpc_failure_codes=GRPC_NONZERO_FAILS`` to get that stricter behaviour.
* A stream that errors before the response ends (RST_STREAM, connection lost, timeout)
  is a failure, and so is a request that never got a response.

One simplification: Linkerd lets a 5xx win over a ``grpc-status`` found only in trailers
(and ignores the HTTP status for ``application/grpc+*`` requests); here a ``grpc-status``,
wherever it came from, decides when present, and the HTTP status decides otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

GRPC_OK = 0
# The codes Linkerd's default classifier counts as failures.
GRPC_LINKERD_FAILURES: frozenset[int] = frozenset({2, 4, 13, 14, 15})
GRPC_NONZERO_FAILS: frozenset[int] = frozenset(range(1, 17))


class Outcome(StrEnum):
    """Values of Linkerd's ``classification`` metric label."""

    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class Classification:
    outcome: Outcome
    # Which rule decided: "http", "grpc", "stream" (reset or lost) or "no-response".
    basis: str

    @property
    def success(self) -> bool:
        return self.outcome is Outcome.SUCCESS


def outcome_label(
    status: int | None, *, grpc_status: int | None = None, stream_failed: bool = False
) -> str:
    """`classify(...).outcome.value` with Linkerd's default gRPC failure codes, without making
    a Classification: the data plane labels every request it observes with it."""
    if stream_failed or status is None:
        return "failure"
    if grpc_status is not None:
        return "failure" if grpc_status in GRPC_LINKERD_FAILURES else "success"
    return "failure" if 500 <= status <= 599 else "success"


def classify(
    status: int | None,
    *,
    grpc_status: int | None = None,
    stream_failed: bool = False,
    grpc_failure_codes: frozenset[int] = GRPC_LINKERD_FAILURES,
) -> Classification:
    """Classify one request/response exchange.

    ``status`` is the final HTTP status (None when no response headers arrived);
    ``stream_failed`` says the exchange broke off before the response was complete.
    """
    if stream_failed:
        return Classification(Outcome.FAILURE, "stream")
    if status is None:
        return Classification(Outcome.FAILURE, "no-response")
    if grpc_status is not None:
        failed = grpc_status in grpc_failure_codes
        return Classification(Outcome.FAILURE if failed else Outcome.SUCCESS, "grpc")
    if 500 <= status <= 599:
        return Classification(Outcome.FAILURE, "http")
    return Classification(Outcome.SUCCESS, "http")
