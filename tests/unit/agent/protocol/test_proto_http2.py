"""HTTP/2 observer against real frames produced by the h2 package on both ends."""

from __future__ import annotations

import h2.settings
import hpack
import pytest
from proto_h2_peers import GRPC_REQUEST, Pair

from nodeagent.protocol.http2 import (
    PREFACE,
    Http2Error,
    Http2GoAway,
    Http2Observer,
    Http2RequestStarted,
    Http2ResponseHeaders,
    Http2StreamEnded,
    ProtocolError,
)


def replay(wire: list[tuple[str, bytes]], *, chunk: int) -> list[object]:
    obs = Http2Observer()
    events: list[object] = []
    for side, data in wire:
        feed = obs.feed_client if side == "c" else obs.feed_server
        for i in range(0, len(data), chunk):
            events += feed(data[i : i + chunk])
    return events + obs.close()


def test_unary_grpc_call() -> None:
    p = Pair()
    p.client.send_headers(1, GRPC_REQUEST)
    p.client.send_data(1, b"\x00\x00\x00\x00\x02ab", end_stream=True)
    assert p.c2s() == [
        Http2RequestStarted(
            1,
            "POST",
            "emoji-svc.emojivoto:8080",
            "/emojivoto.v1.EmojiService/ListAll",
            "application/grpc",
            True,
        )
    ]
    p.server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    p.server.send_data(1, b"\x00\x00\x00\x00\x03xyz")
    p.server.send_headers(1, [("grpc-status", "0")], end_stream=True)
    assert p.s2c() == [
        Http2ResponseHeaders(1, 200, None),
        Http2StreamEnded(1, 200, 0, False, None, 7, 8),
    ]


def test_trailers_only_grpc_error() -> None:
    p = Pair()
    p.client.send_headers(1, GRPC_REQUEST, end_stream=True)
    p.c2s()
    p.server.send_headers(
        1,
        [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "14")],
        end_stream=True,
    )
    assert p.s2c() == [
        Http2ResponseHeaders(1, 200, 14),
        Http2StreamEnded(1, 200, 14, False, None, 0, 0),
    ]


def test_server_streaming_counts_every_data_byte_and_ignores_padding() -> None:
    p = Pair()
    p.client.send_headers(1, GRPC_REQUEST, end_stream=True)
    p.c2s()
    p.server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    for i in range(50):
        p.server.send_data(1, b"m" * 100, pad_length=(i % 3) * 10)
        p.s2c()
        p.client.acknowledge_received_data(100 + (i % 3) * 10 + (1 if i % 3 else 0), 1)
        p.c2s()
    p.server.send_headers(1, [("grpc-status", "0")], end_stream=True)
    assert p.s2c()[-1] == Http2StreamEnded(1, 200, 0, False, None, 0, 5000)


def test_client_cancel_is_a_reset() -> None:
    p = Pair()
    p.client.send_headers(1, GRPC_REQUEST, end_stream=True)
    p.c2s()
    p.client.reset_stream(1, error_code=8)
    assert p.c2s() == [Http2StreamEnded(1, None, None, True, 8, 0, 0)]


def test_reset_after_a_complete_response_changes_nothing() -> None:
    p = Pair()
    p.client.send_headers(1, GRPC_REQUEST)  # request body still open
    p.c2s()
    p.server.send_headers(1, [(":status", "200"), ("grpc-status", "0")], end_stream=True)
    p.server.reset_stream(1, error_code=0)
    events = p.s2c()
    assert events[-1] == Http2StreamEnded(1, 200, 0, False, None, 0, 0)
    assert len([e for e in events if isinstance(e, Http2StreamEnded)]) == 1


def test_interleaved_streams_answered_out_of_order() -> None:
    p = Pair()
    for sid in (1, 3, 5):
        p.client.send_headers(
            sid,
            [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", f"/s{sid}")],
            end_stream=True,
        )
    started = p.c2s()
    assert [(e.stream_id, e.path, e.grpc) for e in started] == [
        (1, "/s1", False),
        (3, "/s3", False),
        (5, "/s5", False),
    ]
    for sid, status in ((5, 500), (1, 200), (3, 404)):
        p.server.send_headers(sid, [(":status", str(status))])
    for sid in (3, 5, 1):
        p.server.send_data(sid, b"x" * sid, end_stream=True)
    ended = [e for e in p.s2c() if isinstance(e, Http2StreamEnded)]
    assert [(e.stream_id, e.status, e.response_bytes) for e in ended] == [
        (3, 404, 3),
        (5, 500, 5),
        (1, 200, 1),
    ]


def test_header_table_size_changes_keep_decoders_in_sync() -> None:
    p = Pair()
    sizes = [256, 0, 8192, 100, 4096]
    sid = 1
    for round_, size in enumerate(sizes):
        p.server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: size})
        p.client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: size})
        p.s2c()
        p.c2s()
        p.s2c()
        for n in range(6):
            p.client.send_headers(
                sid,
                [
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":authority", f"svc-{n % 2}"),
                    (":path", f"/r{round_}/{n % 3}"),
                    ("x-tag", f"value-{n % 2}" * 5),
                ],
                end_stream=True,
            )
            started = p.c2s()
            assert started[-1].path == f"/r{round_}/{n % 3}", (size, n)
            assert started[-1].authority == f"svc-{n % 2}"
            p.server.send_headers(
                sid, [(":status", str(200 + n)), ("x-resp", f"r-{n % 2}" * 7)], end_stream=True
            )
            assert p.s2c()[0] == Http2ResponseHeaders(sid, 200 + n, None)
            sid += 2


def test_headers_of_a_forgotten_stream_are_still_decoded() -> None:
    p = Pair()
    p.client.send_headers(1, GRPC_REQUEST, end_stream=True)
    p.c2s()
    p.client.reset_stream(1, error_code=8)
    p.c2s(deliver=False)  # the server never hears of the reset
    # The server's response to the stream the observer already closed adds entries to its
    # HPACK table; the next response refers to them by index.
    p.server.send_headers(
        1, [(":status", "200"), ("x-unique-header", "only-in-the-table")], end_stream=True
    )
    p.s2c(deliver=False)
    p.client.send_headers(3, GRPC_REQUEST, end_stream=True)
    p.c2s()
    p.server.send_headers(
        3, [(":status", "201"), ("x-unique-header", "only-in-the-table")], end_stream=True
    )
    assert p.s2c(deliver=False) == [
        Http2ResponseHeaders(3, 201, None),
        Http2StreamEnded(3, 201, None, False, None, 0, 0),
    ]


def test_large_header_block_uses_continuation() -> None:
    p = Pair()
    big = "v" * 40_000
    p.client.send_headers(
        1, [*GRPC_REQUEST[:3], (":path", "/big"), ("x-big", big)], end_stream=True
    )
    started = p.c2s(deliver=False)
    assert started[0].path == "/big"


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload
    )


def test_padded_headers_with_priority_by_hand() -> None:
    obs = Http2Observer()
    block = hpack.Encoder().encode(
        [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/pad")]
    )
    pad = 7
    payload = bytes([pad]) + (0).to_bytes(4, "big") + b"\x10" + block + bytes(pad)
    # PADDED | PRIORITY | END_HEADERS | END_STREAM
    events = obs.feed_client(PREFACE + frame(0x1, 0x8 | 0x20 | 0x4 | 0x1, 1, payload))
    assert events == [Http2RequestStarted(1, "GET", "a", "/pad", "", False)]


def test_goaway_refuses_streams_beyond_last_id() -> None:
    p = Pair()
    for sid in (1, 3):
        p.client.send_headers(sid, GRPC_REQUEST, end_stream=True)
    p.c2s()
    p.server.close_connection(last_stream_id=1)
    assert p.s2c() == [
        Http2GoAway(False, 1, 0),
        Http2StreamEnded(3, None, None, True, None, 0, 0, refused=True),
    ]
    assert p.obs.close() == [Http2StreamEnded(1, None, None, True, None, 0, 0)]


def test_server_push() -> None:
    p = Pair()
    p.client.send_headers(
        1,
        [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "/")],
        end_stream=True,
    )
    p.c2s()
    p.server.push_stream(
        1,
        2,
        [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "/app.css")],
    )
    p.server.send_headers(2, [(":status", "200")])
    p.server.send_data(2, b"css", end_stream=True)
    p.server.send_headers(1, [(":status", "200")], end_stream=True)
    events = p.s2c()
    assert Http2RequestStarted(2, "GET", "web", "/app.css", "", False, pushed=True) in events
    assert Http2StreamEnded(2, 200, None, False, None, 0, 3) in events
    assert Http2StreamEnded(1, 200, None, False, None, 0, 0) in events


def test_oversized_frame_is_an_error_until_the_peer_allows_it() -> None:
    obs = Http2Observer()
    big = frame(0x0, 0x0, 1, bytes(20_000))
    with pytest.raises(Http2Error, match="over the 16384 limit"):
        obs.feed_client(PREFACE + big)
    obs = Http2Observer()
    obs.feed_client(PREFACE)
    settings = frame(0x4, 0, 0, (5).to_bytes(2, "big") + (65_536).to_bytes(4, "big"))
    obs.feed_server(settings)
    assert obs.feed_client(big) == []


def test_bad_preface() -> None:
    with pytest.raises(ProtocolError, match="preface"):
        Http2Observer().feed_client(b"PRI * HTTP/2.0\r\n\r\nXX")


def test_frame_inside_a_header_block_is_an_error() -> None:
    obs = Http2Observer()
    block = hpack.Encoder().encode([(":method", "GET"), (":path", "/")])
    with pytest.raises(Http2Error, match="inside a header block"):
        obs.feed_client(PREFACE + frame(0x1, 0x0, 1, block) + frame(0x6, 0, 0, bytes(8)))


def test_garbage_hpack_is_an_error() -> None:
    with pytest.raises(Http2Error, match="HPACK"):
        Http2Observer().feed_client(PREFACE + frame(0x1, 0x4, 1, b"\xff\xff\xff\xff\xff"))


def test_close_fails_open_streams() -> None:
    p = Pair()
    p.client.send_headers(1, GRPC_REQUEST, end_stream=True)
    p.c2s()
    p.server.send_headers(1, [(":status", "200")])
    p.server.send_data(1, b"partial")
    p.s2c()
    assert p.obs.close() == [Http2StreamEnded(1, 200, None, True, None, 0, 7)]


def test_split_anywhere_gives_the_same_events() -> None:
    p = Pair()
    for sid in (1, 3):
        p.client.send_headers(sid, GRPC_REQUEST)
        p.client.send_data(sid, b"\x00" * 30, end_stream=True)
    p.c2s()
    p.server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    p.server.send_data(1, b"d" * 70, pad_length=9)
    p.server.send_headers(1, [("grpc-status", "2")], end_stream=True)
    p.server.send_headers(3, [(":status", "503")], end_stream=True)
    p.s2c()
    whole = replay(p.wire, chunk=1 << 20)
    assert len(whole) == 6
    for chunk in (1, 2, 5, 9, 10, 13):
        assert replay(p.wire, chunk=chunk) == whole, chunk
