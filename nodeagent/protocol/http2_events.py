"""Events the HTTP/2 observer reports, one stream or connection fact each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Http2RequestStarted:
    stream_id: int
    method: str
    authority: str
    path: str
    content_type: str
    grpc: bool
    pushed: bool = False


@dataclass(slots=True)
class Http2ResponseHeaders:
    """The final (non-1xx) response headers of a stream."""

    stream_id: int
    status: int
    grpc_status: int | None


@dataclass(slots=True)
class Http2StreamEnded:
    """The response finished (server END_STREAM), or the stream died before it did.

    ``reset`` says the stream ended by RST_STREAM, GOAWAY or connection close before the
    response was complete; ``refused`` marks streams the server never processed (REFUSED_STREAM
    or beyond a GOAWAY's last stream id), which well-behaved clients retry elsewhere.
    """

    stream_id: int
    status: int | None
    grpc_status: int | None
    reset: bool
    error_code: int | None
    request_bytes: int
    response_bytes: int
    refused: bool = False


@dataclass(slots=True)
class Http2GoAway:
    from_client: bool
    last_stream_id: int
    error_code: int


Http2Event = Http2RequestStarted | Http2ResponseHeaders | Http2StreamEnded | Http2GoAway
