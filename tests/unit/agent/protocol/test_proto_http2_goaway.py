"""Where the agent's own GOAWAY goes into a relayed HTTP/2 server stream (FrameCursor).

Real frames from the h2 library: an HTTP/2 server answering two streams, one with a DATA frame
larger than any read and one with a header block split into HEADERS + CONTINUATION. The relay
has fed the observer some of the server's bytes (any cut, also inside a frame header or a
padded DATA frame) when the agent decides to send the GOAWAY; the rest arrives in reads of
awkward sizes. Whatever the cut, the client must receive every server frame intact and in
order, with one GOAWAY (NO_ERROR, last stream 2^31-1) at the first frame boundary at or after
the cut that is outside a header block, which a strict reader (the agent's own observer)
accepts.
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import pytest

from nodeagent.protocol.http2 import Http2Observer
from nodeagent.protocol.http2_frames import CONTINUATION, END_HEADERS, GOAWAY, HEADERS, PREFACE
from nodeagent.protocol.http2_goaway import GRACEFUL_LAST_STREAM, FrameCursor, goaway_frame
from tests.unit.agent.protocol.proto_h2_peers import GRPC_REQUEST


def _frames(stream: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream, payload) of every frame of a server->client byte stream."""
    out, pos = [], 0
    while pos < len(stream):
        length = int.from_bytes(stream[pos : pos + 3], "big")
        ftype, flags = stream[pos + 3], stream[pos + 4]
        sid = int.from_bytes(stream[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        out.append((ftype, flags, sid, stream[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert pos == len(stream), "the stream ends inside a frame"
    return out


def _exchange() -> tuple[bytes, bytes]:
    """(client bytes, server bytes) of two answered streams, over real h2 connections."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    client.send_headers(1, GRPC_REQUEST, end_stream=True)
    client.send_headers(3, GRPC_REQUEST, end_stream=True)
    to_server = client.data_to_send()
    server.initiate_connection()
    server.receive_data(to_server)
    server.increment_flow_control_window(1 << 20)
    server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    server.send_data(1, b"x" * 16000, pad_length=7)  # padded, larger than the reads below
    server.send_headers(1, [("grpc-status", "0")], end_stream=True)
    to_client = server.data_to_send()
    # Stream 3: a response header block of HEADERS + CONTINUATION (h2 never splits one itself).
    block = server.encoder.encode([(":status", "200"), ("x-big", "y" * 300)])
    cut = len(block) // 2
    to_client += _frame(HEADERS, 0, 3, block[:cut]) + _frame(
        CONTINUATION, END_HEADERS, 3, block[cut:]
    )
    server.send_data(3, b"z" * 100, end_stream=True)
    to_client += server.data_to_send()
    return to_server, to_client


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + struct.pack(">L", sid) + payload
    )


CLIENT, SERVER = _exchange()
FRAMES = _frames(SERVER)


def _allowed_offsets() -> list[int]:
    """Frame boundaries outside a header block, as offsets in SERVER."""
    offsets, pos, in_block = [0], 0, False
    for ftype, flags, _sid, payload in FRAMES:
        pos += 9 + len(payload)
        in_block = ftype in (HEADERS, CONTINUATION) and not flags & END_HEADERS
        if not in_block:
            offsets.append(pos)
    return offsets


ALLOWED = _allowed_offsets()
# Every offset near a frame boundary (inside frame headers, a DATA frame's pad length, the
# first payload bytes), and a stride through the rest.
_EDGES = [0]
for _f in FRAMES:
    _EDGES.append(_EDGES[-1] + 9 + len(_f[3]))
CUTS = sorted(
    {c for e in _EDGES for c in range(e - 11, e + 12) if 0 <= c <= len(SERVER)}
    | set(range(0, len(SERVER) + 1, 97))
)


def _spliced(cut: int, read: int) -> bytes:
    """What the client receives when the GOAWAY is decided after `cut` server bytes were relayed
    and the rest comes in reads of `read` bytes."""
    obs = Http2Observer()
    obs.feed_client(CLIENT)
    obs.feed_server(SERVER[:cut])
    cursor = FrameCursor.of_reader(obs.server)
    out = bytearray(SERVER[:cut])
    goaway = goaway_frame()
    pending = True
    if cursor.at_boundary:
        out += goaway
        pending = False
    for pos in range(cut, len(SERVER), read):
        chunk = SERVER[pos : pos + read]
        obs.feed_server(chunk)
        if pending and (at := cursor.find(chunk)) is not None:
            chunk = chunk[:at] + goaway + chunk[at:]
            pending = False
        out += chunk
    assert not pending, "the GOAWAY never found a place"
    return bytes(out)


def test_the_sample_has_what_the_cursor_must_respect() -> None:
    types = [f[0] for f in FRAMES]
    assert CONTINUATION in types and HEADERS in types
    assert any(len(f[3]) > 4096 for f in FRAMES), "a DATA frame larger than the reads"
    assert any(f[0] == HEADERS and not f[1] & END_HEADERS for f in FRAMES)


@pytest.mark.parametrize("read", [5, 4096])
def test_goaway_lands_between_frames_and_outside_header_blocks(read: int) -> None:
    goaway = goaway_frame()
    for cut in CUTS:
        out = _spliced(cut, read)
        at = min(off for off in ALLOWED if off >= cut)
        assert out == SERVER[:at] + goaway + SERVER[at:], f"cut {cut}, reads of {read}"
        # A strict reader takes it: no frame inside a header block, no frame cut in two.
        check = Http2Observer()
        check.feed_client(CLIENT)
        events = check.feed_server(out)
        assert check.failed is None
        goaways = [e for e in events if type(e).__name__ == "Http2GoAway"]
        assert [(g.last_stream_id, g.error_code) for g in goaways] == [(GRACEFUL_LAST_STREAM, 0)]


def test_cut_inside_a_header_block_waits_for_its_continuation() -> None:
    headers_at = next(i for i, f in enumerate(FRAMES) if f[0] == HEADERS and not f[1] & END_HEADERS)
    start = sum(9 + len(f[3]) for f in FRAMES[: headers_at + 1])  # right after HEADERS
    continuation_end = start + 9 + len(FRAMES[headers_at + 1][3])
    out = _spliced(start, 4096)
    assert out[continuation_end : continuation_end + 9][3] == GOAWAY
    assert out[:continuation_end] == SERVER[:continuation_end]


def test_goaway_frame_is_graceful() -> None:
    frame = goaway_frame()
    assert _frames(frame) == [(GOAWAY, 0, 0, struct.pack(">LL", (1 << 31) - 1, 0))]
    # A real client takes it: no new streams, the open ones go on.
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    events = client.receive_data(frame)
    assert [type(e).__name__ for e in events] == ["ConnectionTerminated"]
    assert events[0].error_code == 0 and events[0].last_stream_id == GRACEFUL_LAST_STREAM


def test_a_cursor_from_a_fresh_reader_is_at_a_boundary() -> None:
    obs = Http2Observer()
    obs.feed_client(PREFACE)
    assert FrameCursor.of_reader(obs.server).at_boundary
