"""Per-request authorization on HTTP/1: allowed requests reach the app byte for byte (bodies of
either framing), a denied one never does, and its 403 waits for the app's earlier answers."""

from __future__ import annotations

import pytest

from nodeagent.protocol.authz_gate import GateError, Http1Gate


def only_get_api(method: str, path: str) -> tuple[bool, str]:
    ok = method == "GET" and path.startswith("/api/")
    return ok, f"{method} {path} not allowed by ns/p"


def feed_bytewise(gate: Http1Gate, wire: bytes):
    fwd, reply, close, denied = b"", b"", False, []
    for i in range(len(wire)):
        out = gate.client(wire[i : i + 1])
        fwd += out.forward
        reply += out.reply
        close |= out.close
        denied += out.denied
    return fwd, reply, close, denied


def test_allowed_requests_pass_whole_whatever_their_framing() -> None:
    wire = (
        b"GET /api/a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /api/b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /api/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nxyz\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    gate = Http1Gate(only_get_api)
    fwd, reply, close, denied = feed_bytewise(gate, wire)
    assert fwd == wire and not reply and not close and not denied
    gate2 = Http1Gate(only_get_api)
    assert gate2.client(wire).forward == wire  # all at once, the same


def test_a_denied_request_never_reaches_the_app_and_waits_for_earlier_answers() -> None:
    gate = Http1Gate(only_get_api)
    out = gate.client(
        b"GET /api/a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /admin HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecret"
        b"GET /api/after HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert out.forward == b"GET /api/a HTTP/1.1\r\nHost: x\r\n\r\n"
    assert [(d.method, d.path) for d in out.denied] == [("POST", "/admin")]
    assert not out.reply  # the app still owes the answer to /api/a
    half = gate.server(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    assert not half.reply
    done = gate.server(b"cd")
    assert done.close and done.reply.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"POST /admin not allowed by ns/p" in done.reply
    assert gate.client(b"GET /api/z HTTP/1.1\r\n\r\n").forward == b""  # nothing more passes


def test_a_first_denied_request_is_answered_at_once() -> None:
    gate = Http1Gate(only_get_api)
    out = gate.client(b"DELETE /api/a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.forward == b"" and out.close and b" 403 " in out.reply


def test_an_allowed_upgrade_becomes_a_tunnel() -> None:
    gate = Http1Gate(lambda m, p: (True, ""))
    head = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert gate.client(head + b"\x81\x05frame").forward == head + b"\x81\x05frame"
    assert gate.client(b"POST /x HTTP/1.1\r\n").forward == b"POST /x HTTP/1.1\r\n"


@pytest.mark.parametrize(
    "wire",
    [
        b"GET /api/ HTTP/2.0\r\n\r\n",
        b"GET /api/ HTTP/1.1\r\nbad\r\n\r\n",
        b"GET /api/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /api/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    ],
)
def test_unframeable_requests_are_refused(wire: bytes) -> None:
    with pytest.raises(GateError):
        Http1Gate(only_get_api).client(wire)
