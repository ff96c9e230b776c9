"""An h2 client and server talking through an Http2Observer: real frames for the tests."""

from __future__ import annotations

import h2.config
import h2.connection

from nodeagent.protocol.http2 import Http2Observer

GRPC_REQUEST = [
    (":method", "POST"),
    (":scheme", "http"),
    (":authority", "emoji-svc.emojivoto:8080"),
    (":path", "/emojivoto.v1.EmojiService/ListAll"),
    ("content-type", "application/grpc"),
    ("te", "trailers"),
]


class Pair:
    """Every byte either peer sends passes through one observer; ``wire`` keeps the order."""

    def __init__(self) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, validate_inbound_headers=False)
        )
        self.obs = Http2Observer()
        self.events: list[object] = []
        self.wire: list[tuple[str, bytes]] = []
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.c2s()
        self.s2c()
        self.c2s()

    def c2s(self, *, deliver: bool = True) -> list[object]:
        data = self.client.data_to_send()
        self.wire.append(("c", data))
        new = self.obs.feed_client(data)
        if deliver:
            self.server.receive_data(data)
        self.events += new
        return new

    def s2c(self, *, deliver: bool = True) -> list[object]:
        data = self.server.data_to_send()
        self.wire.append(("s", data))
        new = self.obs.feed_server(data)
        if deliver:
            self.client.receive_data(data)
        self.events += new
        return new


def grpc_transcript() -> list[tuple[str, bytes]]:
    """Two interleaved gRPC calls (one failing in its trailers, one reset) and a GOAWAY."""
    p = Pair()
    for sid in (1, 3, 5):
        p.client.send_headers(sid, GRPC_REQUEST)
        p.client.send_data(sid, b"\x00\x00\x00\x00\x04ping", end_stream=sid != 5)
    p.c2s()
    p.server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    p.server.send_headers(3, [(":status", "200"), ("grpc-status", "14")], end_stream=True)
    p.server.send_data(1, b"\x00\x00\x00\x00\x04pong", pad_length=3)
    p.server.send_headers(1, [("grpc-status", "2"), ("grpc-message", "boom")], end_stream=True)
    p.s2c()
    p.client.reset_stream(5, error_code=8)
    p.client.ping(b"12345678")
    p.c2s()
    p.server.close_connection(last_stream_id=5)
    p.s2c()
    return p.wire
