"""Per-stream authorization on HTTP/2 between a real h2 client and a real h2 server (the h2
library on both ends): allowed calls reach the app and come back, denied ones get a trailers-only
PERMISSION_DENIED or 403 and never reach the app, and HPACK and flow control stay in step on
both sides over many calls."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events

from nodeagent.protocol.authz_h2gate import Http2Gate


def only_list_all(method: str, path: str) -> tuple[bool, str]:
    return path.endswith("/ListAll"), f"{method} {path} not allowed by ns/emoji"


class Pipe:
    def __init__(self) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.app = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.gate = Http2Gate(only_list_all)
        self.client.initiate_connection()
        self.app.initiate_connection()
        self.client_events: list[h2.events.Event] = []
        self.app_events: list[h2.events.Event] = []
        self.denied: list = []

    def pump(self) -> None:
        for _ in range(20):
            moved = False
            if data := self.client.data_to_send():
                out = self.gate.client(data)
                self.denied += out.denied
                if out.to_app:
                    self.app_events += self.app.receive_data(out.to_app)
                if out.to_client:
                    self.client_events += self.client.receive_data(out.to_client)
                moved = True
            self._answer()
            if data := self.app.data_to_send():
                # Split the app's bytes at awkward places: answers must still land between frames.
                for i in range(0, len(data), 7):
                    back = self.gate.server(data[i : i + 7])
                    if back:
                        self.client_events += self.client.receive_data(back)
                moved = True
            if not moved:
                return

    def _answer(self) -> None:
        for ev in list(self.app_events):
            if isinstance(ev, h2.events.StreamEnded):
                self.app.send_headers(
                    ev.stream_id, [(":status", "200"), ("content-type", "application/grpc")]
                )
                self.app.send_data(ev.stream_id, b"\x00\x00\x00\x00\x02ok")
                self.app.send_headers(ev.stream_id, [("grpc-status", "0")], end_stream=True)
                self.app_events.remove(ev)


def call(pipe: Pipe, sid: int, method: str) -> None:
    pipe.client.send_headers(
        sid,
        [
            (":method", "POST"), (":scheme", "http"), (":authority", "emoji-svc:8080"),
            (":path", f"/emojivoto.v1.EmojiService/{method}"),
            ("content-type", "application/grpc"), ("te", "trailers"),
            ("user-agent", "grpc-python/1.0"), ("x-request-id", f"req-{sid}"),
        ],
    )  # fmt: skip
    pipe.client.send_data(sid, b"\x00\x00\x00\x00\x05" + b"x" * 5, end_stream=True)


def statuses(pipe: Pipe) -> dict[int, str]:
    out: dict[int, str] = {}
    for ev in pipe.client_events:
        if isinstance(ev, h2.events.ResponseReceived | h2.events.TrailersReceived):
            for k, v in ev.headers:
                if k == b"grpc-status":
                    out[ev.stream_id] = v.decode()
    return out


def test_allowed_calls_reach_the_app_and_denied_ones_never_do() -> None:
    pipe = Pipe()
    sids = list(range(1, 80, 2))
    for sid in sids:
        call(pipe, sid, "ListAll" if sid % 4 == 1 else "FindByShortcode")
        pipe.pump()
    got = statuses(pipe)
    allowed = {s for s in sids if s % 4 == 1}
    assert {s for s, st in got.items() if st == "0"} == allowed
    assert {s for s, st in got.items() if st == "7"} == set(sids) - allowed
    app_saw = {ev.stream_id for ev in pipe.app_events if isinstance(ev, h2.events.RequestReceived)}
    assert app_saw == allowed  # the app only ever heard of allowed streams
    assert len(pipe.denied) == len(sids) - len(allowed)
    assert all(d.grpc and d.path.endswith("/FindByShortcode") for d in pipe.denied)
    # 20 denied 10-byte bodies never reached the app; the client's window got them back.
    assert pipe.client.outbound_flow_control_window >= 65535 - 1000


def test_the_app_sees_the_request_headers_as_sent() -> None:
    pipe = Pipe()
    received: list = []
    call(pipe, 1, "ListAll")
    for _ in range(3):
        data = pipe.client.data_to_send()
        if data:
            received += pipe.app.receive_data(pipe.gate.client(data).to_app)
    (req,) = [e for e in received if isinstance(e, h2.events.RequestReceived)]
    headers = dict(req.headers)
    assert headers[":path"] == "/emojivoto.v1.EmojiService/ListAll"
    assert headers["x-request-id"] == "req-1" and headers["te"] == "trailers"
