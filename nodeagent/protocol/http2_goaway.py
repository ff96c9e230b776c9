"""Where a GOAWAY of the agent's own may go into a relayed HTTP/2 server->client stream (sans-io).

The relay passes the server's bytes through untouched. To send an HTTP/2 client elsewhere (the
endpoint its connection is pinned to left the Service, or the Service grew and a new connection
would be balanced per request) the agent adds one GOAWAY frame towards the client. It may only go
between two frames, and never between a HEADERS or PUSH_PROMISE and its CONTINUATIONs (RFC 9113
section 6.10: a header block is one contiguous run of frames). `FrameCursor` follows the frame
boundaries of the stream from a known point (the observer's server-side FrameReader) and finds
the first place in a chunk where the frame may go.

The GOAWAY is the graceful kind (RFC 9113 section 6.8): NO_ERROR, last-stream-id 2^31-1. The
client opens no new stream on the connection, and every stream it already sent (also one on the
wire towards the agent as the GOAWAY is written) is still relayed to the server and answered. A
lower last-stream-id would tell the client that streams above it were never processed, which
the relay cannot make true (they still reach the server, and a client that retried them would
run them twice), and a server's own later GOAWAY naming a higher id would then be an increase,
which RFC 9113 forbids. With 2^31-1 whatever the server sends later is a decrease or the same.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from nodeagent.protocol.http2_frames import CONTINUATION, END_HEADERS, GOAWAY, HEADERS, PUSH_PROMISE

if TYPE_CHECKING:
    from nodeagent.protocol.http2_frames import FrameReader

GRACEFUL_LAST_STREAM = (1 << 31) - 1
NO_ERROR = 0x0
_HEADER_BLOCK_TYPES = (HEADERS, PUSH_PROMISE, CONTINUATION)


def goaway_frame(
    last_stream: int = GRACEFUL_LAST_STREAM, error_code: int = NO_ERROR, debug: bytes = b""
) -> bytes:
    """One GOAWAY frame (stream 0) with its 9-byte frame header."""
    payload = struct.pack(">LL", last_stream & 0x7FFFFFFF, error_code) + debug
    return len(payload).to_bytes(3, "big") + bytes((GOAWAY, 0)) + b"\0\0\0\0" + payload


class FrameCursor:
    """Frame boundaries of one direction: bytes left of the current frame, a partial frame
    header, and whether a header block is still open (its CONTINUATION to come)."""

    __slots__ = ("skip", "head", "in_block")

    def __init__(self, *, skip: int = 0, head: bytes = b"", in_block: bool = False) -> None:
        self.skip = skip
        self.head = head
        self.in_block = in_block

    @classmethod
    def of_reader(cls, reader: FrameReader) -> FrameCursor:
        """Where an observer's frame reader stands after the bytes it was fed (the relay feeds
        it every chunk before relaying it, so this is where the relayed stream stands)."""
        if reader.data_left:
            return cls(skip=reader.data_left)
        in_block = reader.block is not None
        held = bytes(reader.buf)  # the start of a frame the reader keeps until it is whole
        if len(held) < 9:
            return cls(head=held, in_block=in_block)
        return cls(skip=9 + int.from_bytes(held[:3], "big") - len(held), in_block=_opens(held))

    @property
    def at_boundary(self) -> bool:
        return not self.skip and not self.head and not self.in_block

    def find(self, data: bytes) -> int | None:
        """Advance over `data`; the first offset in it (0 to len(data)) between two frames and
        outside a header block, or None. Once it has found one the cursor stops there: it is
        for one frame of the agent's, and the rest of `data` is not followed."""
        if self.at_boundary:
            return 0
        pos, end = 0, len(data)
        while pos < end:
            if self.skip:
                step = min(self.skip, end - pos)
                self.skip -= step
                pos += step
            else:
                take = data[pos : pos + 9 - len(self.head)]
                self.head += take
                pos += len(take)
                if len(self.head) < 9:
                    return None
                head, self.head = self.head, b""
                self.skip = int.from_bytes(head[:3], "big")
                self.in_block = _opens(head)
            if self.at_boundary:
                return pos
        return None


def _opens(head: bytes) -> bool:
    """Whether the frame with this header leaves a header block open (CONTINUATION to come);
    any other frame closes one (or, malformed, abandons it: the peer fails the connection)."""
    return head[3] in _HEADER_BLOCK_TYPES and not head[4] & END_HEADERS
