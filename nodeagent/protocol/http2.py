"""HTTP/2 observer: reads frames both ways, decodes header blocks, reports each stream's fate.

The caller relays the original bytes; nothing here is ever re-encoded. Every header block
of a direction is decoded in order (also trailers, pushes and streams nobody asked about)
because HPACK's dynamic table is shared by the whole connection: skipping one block would
desynchronise every later one. Feed each direction before relaying it, as with HTTP/1.
"""

from __future__ import annotations

from nodeagent.protocol.errors import ProtocolError
from nodeagent.protocol.http2_events import (
    Http2Event,
    Http2GoAway,
    Http2RequestStarted,
    Http2ResponseHeaders,
    Http2StreamEnded,
)
from nodeagent.protocol.http2_frames import PREFACE, REFUSED_STREAM, FrameReader, Http2Error

__all__ = [
    "PREFACE",
    "Http2Error",
    "Http2GoAway",
    "Http2Observer",
    "Http2RequestStarted",
    "Http2ResponseHeaders",
    "Http2StreamEnded",
    "ProtocolError",
]

# A connection with more streams in flight than this is not observed any further.
MAX_TRACKED_STREAMS = 10_000


class _Stream:
    __slots__ = ("stream_id", "status", "grpc_status", "request_bytes", "response_bytes")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.status: int | None = None
        self.grpc_status: int | None = None
        self.request_bytes = 0
        self.response_bytes = 0


def _grpc_status(value: bytes | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)


class Http2Observer:
    """Watches one HTTP/2 connection (prior knowledge, starting with the client preface)."""

    def __init__(self) -> None:
        self.client = FrameReader(self, from_client=True)
        self.server = FrameReader(self, from_client=False)
        self.streams: dict[int, _Stream] = {}
        self.last_client_stream = 0
        self.out: list[Http2Event] = []
        self.failed: Http2Error | None = None
        self.closed = False

    def other(self, direction: FrameReader) -> FrameReader:
        return self.server if direction is self.client else self.client

    def feed_client(self, data: bytes) -> list[Http2Event]:
        return self._feed(self.client, data)

    def feed_server(self, data: bytes) -> list[Http2Event]:
        return self._feed(self.server, data)

    def _feed(self, direction: FrameReader, data: bytes) -> list[Http2Event]:
        if self.failed is not None:
            raise Http2Error(f"observer already failed: {self.failed.reason}")
        if self.closed:
            raise Http2Error("observer is closed")
        self.out = []
        try:
            direction.feed(bytes(data))
        except Http2Error as exc:
            self.failed = exc
            raise Http2Error(exc.reason, events=self.out) from None
        return self.out

    def release(self) -> None:
        """Done with this observer: break the observer <-> frame reader cycles."""
        self.client.observer = self.server.observer = None  # type: ignore[assignment]

    def close(self) -> list[Http2Event]:
        """The connection ended: every stream still open failed."""
        if self.closed or self.failed is not None:
            self.closed = True
            return []
        self.closed = True
        self.out = []
        for sid in sorted(self.streams):
            self._end(sid, reset=True, error_code=None)
        return self.out

    # called by the directions
    def request_headers(self, sid: int, fields: dict[bytes, bytes], *, pushed: bool) -> None:
        if not pushed:
            if sid in self.streams or sid <= self.last_client_stream:
                return  # trailers, or headers for a stream whose response already ended
            if sid % 2 == 0:
                raise Http2Error(f"client opened even stream {sid}")
            self.last_client_stream = sid
        elif sid in self.streams:
            raise Http2Error(f"promised stream {sid} already exists")
        if len(self.streams) >= MAX_TRACKED_STREAMS:
            raise Http2Error(f"more than {MAX_TRACKED_STREAMS} streams in flight")
        self.streams[sid] = _Stream(sid)
        content_type = fields.get(b"content-type", b"").decode("latin-1")
        self.out.append(
            Http2RequestStarted(
                sid,
                fields.get(b":method", b"").decode("latin-1"),
                fields.get(b":authority", fields.get(b"host", b"")).decode("latin-1"),
                fields.get(b":path", b"").decode("latin-1"),
                content_type,
                content_type.startswith("application/grpc"),
                pushed,
            )
        )

    def response_headers(self, sid: int, fields: dict[bytes, bytes], *, end_stream: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        if stream.status is None:
            raw = fields.get(b":status", b"")
            if len(raw) != 3 or not raw.isdigit():
                raise Http2Error(f"stream {sid}: response without a valid :status")
            status = int(raw)
            if status < 200:
                return  # interim (100 Continue, 103 Early Hints): the final one follows
            stream.status = status
            stream.grpc_status = _grpc_status(fields.get(b"grpc-status"))
            self.out.append(Http2ResponseHeaders(sid, status, stream.grpc_status))
        else:
            grpc_status = _grpc_status(fields.get(b"grpc-status"))
            if grpc_status is not None:
                stream.grpc_status = grpc_status
        if end_stream:
            self.response_ended(sid)

    def response_ended(self, sid: int) -> None:
        if sid in self.streams:
            self._end(sid, reset=False, error_code=None)

    def reset(self, sid: int, error_code: int) -> None:
        if sid in self.streams:
            self._end(sid, reset=True, error_code=error_code, refused=error_code == REFUSED_STREAM)

    def goaway(self, from_client: bool, last: int, error_code: int) -> None:
        self.out.append(Http2GoAway(from_client, last, error_code))
        # Streams the GOAWAY's sender never saw were not processed at all.
        parity = 0 if from_client else 1
        for sid in sorted(self.streams):
            if sid > last and sid % 2 == parity:
                self._end(sid, reset=True, error_code=None, refused=True)

    def _end(self, sid: int, *, reset: bool, error_code: int | None, refused: bool = False) -> None:
        s = self.streams.pop(sid)
        self.out.append(
            Http2StreamEnded(
                sid,
                s.status,
                s.grpc_status,
                reset,
                error_code,
                s.request_bytes,
                s.response_bytes,
                refused,
            )
        )
