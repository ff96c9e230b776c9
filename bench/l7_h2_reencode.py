"""What HTTP/2 re-encoding costs the L7 path, per request, measured with h2 itself.

One gRPC unary exchange as the agent's L7 path handles it: the app's HEADERS+DATA decoded on the
downstream connection, the request re-encoded on an upstream connection, the response HEADERS,
DATA and trailers decoded there and re-encoded downstream. Compared with what observing the same
frames costs without re-encoding (decode only), which is what the relay does.

    .venv/bin/python -m bench.l7_h2_reencode   [results: bench/results/l7_h2_reencode.txt]
"""

from __future__ import annotations

import time

import h2
import h2.config
import h2.connection
import hpack

REQ = [
    (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/emojivoto.v1.EmojiService/ListAll"),
    (b":authority", b"emoji-svc.emojivoto:8080"), (b"content-type", b"application/grpc"),
    (b"te", b"trailers"), (b"grpc-accept-encoding", b"identity,deflate,gzip"),
    (b"user-agent", b"grpc-python/1.62.0 grpc-c/39.0.0 (linux; chttp2)"),
    (b"grpc-timeout", b"9999m"),
]  # fmt: skip
RESP = [(b":status", b"200"), (b"content-type", b"application/grpc")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
BODY = b"\x00\x00\x00\x00\x20" + b"x" * 32
N = 20000


def pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    c = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    s = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    c.initiate_connection()
    s.initiate_connection()
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    s.receive_data(c.data_to_send())
    return c, s


def one_hop(client, server) -> None:
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, REQ)
    client.send_data(sid, BODY, end_stream=True)
    server.receive_data(client.data_to_send())
    server.acknowledge_received_data(len(BODY), sid)
    server.send_headers(sid, RESP)
    server.send_data(sid, BODY)
    server.send_headers(sid, TRAILERS, end_stream=True)
    client.receive_data(server.data_to_send())
    client.acknowledge_received_data(len(BODY), sid)
    server.receive_data(client.data_to_send())


def main() -> None:
    # Baseline: one h2 hop (the app and its server, or the bytes an observer decodes).
    c, s = pair()
    t = time.process_time()
    for _ in range(N):
        one_hop(c, s)
    hop = (time.process_time() - t) / N
    # The headers alone: what HPACK encode + decode of one request and response costs.
    enc, dec = hpack.Encoder(), hpack.Decoder()
    t = time.process_time()
    for _ in range(N):
        for block in (REQ, RESP, TRAILERS):
            dec.decode(enc.encode(block), raw=True)
    headers = (time.process_time() - t) / N
    lines = [
        f"one h2 exchange (encode+decode both ways, h2 {h2.__version__}): {hop * 1e6:.1f} us",
        f"of which HPACK encode+decode of its three header blocks: {headers * 1e6:.1f} us",
        f"L7 path re-encoding adds a second hop's work per request: ~{hop * 1e6:.1f} us of CPU "
        "(the terminated downstream side and the new upstream stream each encode and decode "
        "the headers once; HPACK tables are per connection, so nothing can be copied through)",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
