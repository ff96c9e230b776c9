"""The L7 HTTP/1 path against a hostile client: raw sockets send what curl would not, and the
upstream is a small server parsing with h11 (a third-party parser) that records every request
it reads, so a request the agent let through twice, or cut in two, shows."""

from __future__ import annotations

import select
import socket
import threading
import time

import h11
import pytest

from nodeagent.proxy.l7 import http1
from tests.unit.agent.proxy.test_l7_http1 import Proxy, route_obj
from tests.unit.agent.proxy.test_l7_http1_framing import read_until_closed

ROUTE = route_obj(
    [
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
            "backendRefs": [{"name": "web"}],
        }
    ]
)


class Recorder:
    """An HTTP/1.1 upstream on loopback: h11 reads each request; the answer's body names it."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes, bytes]] = []  # method, target, body
        self.trailers: list[list[tuple[bytes, bytes]]] = []  # each request's
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.late_head_body = False
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        h = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = bytearray()
        with conn:
            while True:
                try:
                    event = h.next_event()
                except h11.RemoteProtocolError as exc:  # recorded, and the connection closed
                    self.seen.append((b"!", str(exc).encode(), b""))
                    return
                if event is h11.NEED_DATA:
                    data = conn.recv(65536)
                    h.receive_data(data)
                    if not data:
                        return
                elif isinstance(event, h11.Request):
                    request, body = event, bytearray()
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert request is not None
                    self.seen.append((request.method, request.target, bytes(body)))
                    self.trailers.append(list(event.headers))
                    answer = b"%s %s %d" % (request.method, request.target, len(body))
                    if request.method == b"HEAD" and self.late_head_body:
                        # A server that writes GET's body for a HEAD too, in a later send
                        # (a handler sending its head then its body, both for HEAD)
                        head = h11.Response(status_code=200, headers=[("content-length", "5")])
                        conn.sendall(h.send(head) + h.send(h11.EndOfMessage()))
                        time.sleep(0.2)
                        conn.sendall(b"hello")
                        h.start_next_cycle()
                        continue
                    conn.sendall(
                        h.send(
                            h11.Response(
                                status_code=200, headers=[("content-length", str(len(answer)))]
                            )
                        )
                        + h.send(h11.Data(data=answer))
                        + h.send(h11.EndOfMessage())
                    )
                    if h.our_state is not h11.DONE:
                        return
                    h.start_next_cycle()
                else:
                    return

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture
def mesh():
    upstream = Recorder()
    proxy = Proxy({"web": upstream})  # type: ignore[dict-item]
    proxy.set_route(ROUTE)
    yield proxy, upstream
    proxy.stop()
    upstream.stop()


def send(port: int, data: bytes, *, wait: float = 1.0) -> bytes:
    """Send `data` at once; what the agent answered until it closed or `wait` s passed."""
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        s.sendall(data)
        return read_until_closed(s, wait)[0]


SMUGGLED = b"GET /private HTTP/1.1\r\nHost: web\r\n\r\n"


def test_a_connection_header_naming_content_length_does_not_unframe_the_body(mesh) -> None:
    """`Connection: content-length` names the framing header as hop-by-hop. The body must
    still reach the upstream as this request's body: with the header dropped, the upstream
    read a bodiless POST and then the body as a second request, to a path no route allows."""
    proxy, upstream = mesh
    head = b"POST /api/x HTTP/1.1\r\nHost: web\r\nConnection: content-length\r\n"
    out = send(proxy.port, head + b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED)
    assert out.startswith(b"HTTP/1.1 200"), out
    assert upstream.seen == [(b"POST", b"/api/x", SMUGGLED)], upstream.seen


@pytest.mark.parametrize(
    "ask",
    [
        b"POST /elsewhere HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n",
        b"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n",
    ],
    ids=["upgrade", "connect"],
)
def test_the_body_of_a_declined_upgrade_is_never_read_as_a_request(mesh, ask) -> None:
    """An Upgrade or CONNECT no rule matches is answered 404 and the switch declined; a body
    it declared is its own, not a next request. Before, the parser stopped at the head and
    the body went upstream as a request the client never sent (and got a second answer)."""
    proxy, upstream = mesh
    inner = b"GET /api/smuggled HTTP/1.1\r\nHost: web\r\n\r\n"
    out = send(proxy.port, ask + b"Content-Length: %d\r\n\r\n" % len(inner) + inner)
    assert out.startswith(b"HTTP/1.1 404") and out.count(b"HTTP/1.1 ") == 1, out
    assert upstream.seen == [], upstream.seen


def test_a_trailer_that_never_ends_is_refused_not_buffered(mesh) -> None:
    """After a chunked body's last chunk, a trailer field 4 MB long (no CRLF): it is refused
    400 and the connection closed. Before, httptools kept adding to it (every byte copied again
    on each read: CPU as well as memory without a bound) and the client got no answer."""
    proxy, upstream = mesh
    head = b"POST /api/x HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), 10) as s:
        s.sendall(head + b"2\r\nhi\r\n0\r\nX-Trailer: ")
        try:
            for _ in range(64):
                s.sendall(b"a" * 65536)
        except OSError:
            pass  # the agent closed while we were still sending
        s.settimeout(5)
        try:
            out = s.recv(65536)  # a hang (TimeoutError) is the failure
        except ConnectionResetError:
            out = b"reset"  # closed with our bytes unread: the 400 may be lost
    assert out.startswith(b"HTTP/1.1 400") or out == b"reset", out
    assert upstream.seen == [], upstream.seen


def test_bytes_an_idle_upstream_connection_got_late_never_answer_the_next_request(mesh) -> None:
    """The upstream sends a body after its HEAD answer, in a later packet (the answer was
    complete: the agent pooled the connection). The next request must get its own answer.
    Before, the pooled connection was reused with those bytes waiting: they were read as the
    start of the next answer, which failed, and the request was sent again elsewhere as if the
    upstream had never seen it (it had: two GETs for one)."""
    proxy, upstream = mesh
    upstream.late_head_body = True
    out = send(proxy.port, b"HEAD /api/a HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"\r\n\r\n"), out
    time.sleep(0.5)  # the late bytes are in
    out = send(proxy.port, b"GET /api/b HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"GET /api/b 0"), out
    assert upstream.seen == [(b"HEAD", b"/api/a", b""), (b"GET", b"/api/b", b"")], upstream.seen


def test_a_head_sent_a_byte_at_a_time_is_cut_at_the_header_timeout(mesh, monkeypatch) -> None:
    """Slowloris: a request head that grows by a byte every 0.1 s never ends. The header
    timeout (0.5 s here) bounds the whole head: the agent closes the connection. Before, it
    bounded each read, so any client sending a byte a minute held a connection forever."""
    proxy, upstream = mesh
    monkeypatch.setattr(http1, "HEADER_TIMEOUT", 0.5)
    with socket.create_connection(("127.0.0.1", proxy.port), 10) as s:
        s.sendall(b"GET /api/x HTTP/1.1\r\nHost: web\r\n")
        start = time.monotonic()
        closed_after = None
        while closed_after is None and time.monotonic() - start < 4:
            try:
                s.sendall(b"X")
                if select.select([s], [], [], 0.1)[0] and not s.recv(65536):
                    closed_after = time.monotonic() - start
            except OSError:
                closed_after = time.monotonic() - start
    assert closed_after is not None and closed_after < 2, closed_after
    assert upstream.seen == []


def test_a_request_with_two_host_headers_is_refused(mesh) -> None:
    """RFC 9112 3.2: a request with more than one Host is answered 400. Routes match on the
    first, servers may take the last: passed on, the two could disagree on the request's
    authority. Before, both went upstream (this one, h11, refused it: the client got a 502)."""
    proxy, upstream = mesh
    out = send(proxy.port, b"GET /api/x HTTP/1.1\r\nHost: web\r\nHost: admin.internal\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400"), out
    assert upstream.seen == [], upstream.seen


def test_a_client_expecting_100_continue_gets_it_before_it_sends_the_body(mesh) -> None:
    """`Expect: 100-continue`: the client sends its head and waits for a 100 before the body
    (curl does for uploads over 1 MB). The agent reads the body before going upstream, so it
    is the one to say 100. Before, nobody did: each such upload waited out the client's own
    timeout for it (curl's: 1 s) first."""
    proxy, upstream = mesh
    body = b"x" * 1000
    with socket.create_connection(("127.0.0.1", proxy.port), 10) as s:
        s.sendall(b"PUT /api/up HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
        s.settimeout(5)
        try:
            interim = s.recv(65536)  # nothing in 5 s is the failure
        except TimeoutError:
            interim = b"(nothing)"
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        s.sendall(body)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"PUT /api/up 1000"), answer
    assert upstream.seen == [(b"PUT", b"/api/up", body)]


def test_a_bad_request_followed_by_more_bytes_still_gets_its_400(mesh) -> None:
    """A malformed request and 1 MB after it in one send: the client reads the 400. Before,
    the agent closed with the client's bytes unread, the kernel answered with a reset, and
    the 400 was lost (every time, on loopback); now it shuts down writing and reads and drops
    what still comes for a bounded time before it closes (a lingering close)."""
    proxy, upstream = mesh
    results = []
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", proxy.port), 10) as s:
            s.sendall(b"GET /api/x HTTP/1.1 extra\r\nHost: web\r\n\r\n" + b"x" * 1_000_000)
            try:
                out, closed = read_until_closed(s, 5)
            except ConnectionResetError:
                out, closed = b"reset", True
            results.append((out.split(b"\r\n")[0], closed, out.endswith(b"\r\n\r\n")))
    assert results == [(b"HTTP/1.1 400 Bad Request", True, False)] * 5, results
    assert upstream.seen == []


@pytest.mark.parametrize("size", [100, 200_000], ids=["buffered", "streamed"])
def test_request_trailers_reach_the_upstream(mesh, size) -> None:
    """A chunked request with a trailer field (a body held for a retry, and one streamed):
    the upstream (h11) reads the body and the trailer. Before, trailers were dropped; fields
    a trailer may not carry (RFC 9110 6.5.1) still are."""
    proxy, upstream = mesh
    body = b"b" * size
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (body[: size // 2], body[size // 2 :]))
    request = (
        b"POST /api/t HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + chunks + b"0\r\nX-Sum: 42\r\nHost: elsewhere\r\n\r\n"
    )
    out = send(proxy.port, request, wait=5)
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"POST /api/t %d" % size), out
    assert upstream.seen == [(b"POST", b"/api/t", body)]
    assert upstream.trailers == [[(b"x-sum", b"42")]], upstream.trailers


@pytest.mark.parametrize("sent", [10, 100_000], ids=["buffered", "streamed"])
def test_a_body_trickled_a_byte_at_a_time_is_answered_408(mesh, monkeypatch, sent) -> None:
    """A POST whose body comes a byte every 0.1 s after `sent` bytes at once (each read well
    within the per-read timeout): with 0.5 s allowed (plus a second per MB sent) it is
    answered 408 and the connection closed, the upstream's (if it had the start of the
    body) too. Before, only each read was bounded: it held a connection and an upstream
    slot for as long as the client kept trickling."""
    proxy, upstream = mesh
    monkeypatch.setattr(http1, "BODY_TIMEOUT", 0.5, raising=False)
    monkeypatch.setattr(http1, "BODY_MIN_RATE", 1_000_000, raising=False)
    head = b"POST /api/slow HTTP/1.1\r\nHost: web\r\nContent-Length: 1000000\r\n\r\n"
    allowed = 0.5 + sent / 1_000_000
    with socket.create_connection(("127.0.0.1", proxy.port), 10) as s:
        s.sendall(head + b"x" * sent)
        start = time.monotonic()
        out = b""
        while time.monotonic() - start < allowed + 3:
            try:
                s.sendall(b"x")
            except OSError:
                pass  # the agent closed its side, and then the connection
            if select.select([s], [], [], 0.1)[0]:
                out, _ = read_until_closed(s, 2)
                break
        took = time.monotonic() - start
    assert out.startswith(b"HTTP/1.1 408") and b"connection: close" in out.lower(), out
    assert allowed - 0.3 < took < allowed + 1.5, (took, allowed)
    assert upstream.seen == [] or upstream.seen[0][0] == b"!", upstream.seen  # never whole


class HeadAnswerer:
    """An upstream that answers each request's head with `answer` (keep-alive) and reads
    nothing more; its connections stay open and unread until stop(). `rcvbuf`: a receive
    buffer set before listening, so accepted sockets get that small a window."""

    def __init__(self, answer: bytes, *, rcvbuf: int = 0) -> None:
        self.answer = answer
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(self.answer)
            self.open.append(conn)

    def stop(self) -> None:
        self.sock.close()
        for conn in self.open:
            conn.close()


def early_answer() -> HeadAnswerer:
    """401 from the head alone, the body never read, as an auth check in front of an upload
    handler may; a 64 KiB window, so the body the agent sends on fills the kernel's buffers
    long before it is all out."""
    return HeadAnswerer(
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope", rcvbuf=64 * 1024
    )


def test_an_answer_from_an_upstream_that_never_reads_the_body_reaches_the_client() -> None:
    """A 32 MB POST to an upstream that answers 401 from the head and reads nothing more: the
    client gets the 401, with `Connection: close` (the rest of its body was not read), and
    the upstream connection is not reused. Before, the agent waited for the upstream to take
    the body (it never did) and the client got nothing. (32 MB: more than the kernel's
    buffers on the way can take, so the body cannot all go out before the answer comes, and
    the client never sends beyond its Content-Length, which would be a next request.)"""
    size = 32_000_000
    upstream = early_answer()
    proxy = Proxy({"web": upstream})  # type: ignore[dict-item]
    proxy.set_route(ROUTE)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), 10) as s:
            s.sendall(b"POST /api/up HTTP/1.1\r\nHost: web\r\nContent-Length: %d\r\n\r\n" % size)
            s.setblocking(False)
            sent, start = 0, time.monotonic()
            while time.monotonic() - start < 5 and not select.select([s], [], [], 0)[0]:
                try:
                    sent += s.send(b"x" * min(65536, size - sent))
                    if sent == size:
                        break
                except BlockingIOError:
                    select.select([s], [s], [], 0.05)
            s.setblocking(True)
            out, closed = read_until_closed(s, 5)
        assert out.startswith(b"HTTP/1.1 401") and out.endswith(b"\r\n\r\nnope"), out
        assert b"connection: close" in out.lower() and closed, out
        assert proxy.upstreams.idle.get(("127.0.0.1", upstream.port), []) == []
    finally:
        proxy.stop()
        upstream.stop()


def bare_lf() -> HeadAnswerer:
    """Heads whose lines end with a bare LF (no CR): a HEAD's answer."""
    return HeadAnswerer(b"HTTP/1.1 200 OK\nContent-Length: 5\n\n")


def test_a_head_answer_with_bare_lf_lines_ends_at_its_head() -> None:
    """HEAD to an upstream writing bare LFs: the agent's parser refuses those in any answer
    (502 for a GET), and the HEAD's answer ends at its empty line the same way, at once.
    Before, the agent looked only for CRLF CRLF and waited for the rest of a head that had
    ended (an hour without a route timeout)."""
    upstream = bare_lf()
    proxy = Proxy({"web": upstream})  # type: ignore[dict-item]
    proxy.set_route(ROUTE)
    try:
        start = time.monotonic()
        out = send(
            proxy.port, b"HEAD /api/x HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n", wait=5
        )
        assert out.startswith(b"HTTP/1.1 502") and time.monotonic() - start < 2, out
    finally:
        proxy.stop()
        upstream.stop()


def test_a_malformed_chunk_in_a_streamed_body_is_the_clients_400_not_a_502(mesh) -> None:
    """A chunked body over the retry buffer (streamed as it comes) with a chunk size that is no
    number after 100 KB: the client gets 400 and the upstream a request cut short, never a
    whole one. Before, the agent answered 502 (`upstream failed`: counted against the app)."""
    proxy, upstream = mesh
    chunk = b"c" * 100_000
    out = send(proxy.port, b"POST /api/c HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n%s\r\nzz\r\nmore\r\n" % (len(chunk), chunk), wait=5)  # fmt: skip
    assert out.startswith(b"HTTP/1.1 400") and b"connection: close" in out.lower(), out
    assert upstream.seen == [] or upstream.seen[0][0] == b"!", upstream.seen
    assert proxy.observed[-1].status == 400
