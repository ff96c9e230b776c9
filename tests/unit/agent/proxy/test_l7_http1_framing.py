"""HTTP/1 framing on the L7 path, with curl and nginx on loopback: chunked bodies both ways,
HEAD and 304 answers without a body, an HTTP/1.0 client, pipelined requests in order, and
malformed input answered 400 with the connection closed (never a hang). The path parses with
llhttp and writes heads itself: these are the rules h11 used to enforce for it."""

from __future__ import annotations

import gzip
import os
import random
import socket
import subprocess
import time
from pathlib import Path

import pytest

from nodeagent.proxy.l7.http1 import hop_by_hop_dropped
from tests.unit.agent.proxy import nginxkit
from tests.unit.agent.proxy.test_l7_http1 import Proxy, route_obj, run

NGINX = nginxkit.NGINX
LATER = "Fri, 01 Jan 2100 00:00:00 GMT"  # after any file's mtime: nginx answers 304


class Nginx:
    """nginx over HTTP/1.1 on loopback: static files under /files (ETag, Last-Modified, gzip,
    which makes its answers chunked; under /files/t/ with a trailer field), WebDAV PUT under
    /dav (a chunked upload is stored as the bytes it decodes to), and /small, which takes
    bodies up to 1 KiB: a longer one is answered 413 from its head, and after a second of
    reading and dropping the rest (lingering_time; 30 s by default) nginx closes."""

    def __init__(self, work: Path) -> None:
        for d in ("root/files", "root/dav"):
            (work / d).mkdir(parents=True, exist_ok=True)
        self.root = work / "root"
        self.port = nginxkit.free_port()
        self.work = work
        self.proc = nginxkit.start(
            nginxkit.prelude(work, worker_connections=256)
            + "  default_type text/plain; gzip on; gzip_min_length 0; gzip_types text/plain;\n"
            "  if_modified_since before;\n"
            f"  server {{ listen 127.0.0.1:{self.port}; root {self.root};\n"
            "    location /dav/ { dav_methods PUT; client_max_body_size 0; }\n"
            '    location /files/t/ { add_trailer x-checksum "sum-of-$uri"; }\n'
            '    location /small/ { client_max_body_size 1k; lingering_time 1s; return 200 "ok"; }\n'
            "  }\n"
            "}\n",
            work,
            self.port,
        )

    def log(self) -> str:
        return nginxkit.error_log(self.work)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def text(size: int, seed: int) -> bytes:
    """Compressible but not trivial bytes (gzip shrinks them: nginx's answer is chunked)."""
    rng = random.Random(seed)
    words = [b"mesh", b"agent", b"route", b"retry", b"budget", b"pod", b"node", b"llhttp"]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
    return bytes(out[:size])


# Routes under /files and /dav go to nginx (with a retry rule: bodies up to the retry buffer are
# held for a replay, longer ones stream); any other path matches no rule: the agent answers 404.
ROUTE = route_obj(
    [
        {
            "matches": [
                {"path": {"type": "PathPrefix", "value": "/files"}},
                {"path": {"type": "PathPrefix", "value": "/dav"}},
                {"path": {"type": "PathPrefix", "value": "/small"}},
            ],
            "backendRefs": [{"name": "web"}],
            "retry": {"codes": [503], "attempts": 1},
        }
    ]
)


@pytest.fixture
def mesh(tmp_path: Path):
    if not os.path.exists(NGINX):
        pytest.skip("needs nginx (scripts/bootstrap installs nginx-light)")
    nginx = Nginx(tmp_path / "nginx")
    proxy = Proxy({"web": nginx})  # type: ignore[dict-item]
    proxy.set_route(ROUTE)
    yield proxy, nginx
    proxy.stop()
    nginx.stop()


def curl(*args: str) -> str:
    res = subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.mark.parametrize("size", [10_000, 300_000], ids=["buffered", "streamed"])
def test_a_chunked_upload_and_a_chunked_answer_pass_whole(mesh, tmp_path, size) -> None:
    """curl uploads with Transfer-Encoding: chunked (a body held for a retry, and one over the
    retry buffer, streamed); nginx stores what it decoded. Read back gzip-encoded, nginx's
    answer is chunked; curl gets all of it."""
    proxy, nginx = mesh
    data = text(size, seed=size)
    upload = tmp_path / "upload.txt"
    upload.write_bytes(data)
    base = f"http://127.0.0.1:{proxy.port}"
    code = curl("-o", "/dev/null", "-w", "%{http_code}", "-T", str(upload),
                "-H", "Transfer-Encoding: chunked", "-H", "Expect:", f"{base}/dav/up.txt")  # fmt: skip
    assert code in ("201", "204"), (code, nginx.log())
    assert (nginx.root / "dav" / "up.txt").read_bytes() == data

    got = tmp_path / "got.gz"
    head = curl("-D", "-", "-o", str(got), "-H", "Accept-Encoding: gzip", f"{base}/dav/up.txt")
    assert head.startswith("HTTP/1.1 200"), head
    assert "transfer-encoding: chunked" in head.lower() and "content-length" not in head.lower()
    assert gzip.decompress(got.read_bytes()) == data


def test_head_304_and_the_agents_own_404_leave_the_connection_usable(mesh) -> None:
    """One curl, one connection: HEAD (the length of a body that does not come), a 304, a HEAD
    answered 404 by the agent itself (no rule matches), then a GET whose body must be the
    file's. A body sent (or waited for) after any of the heads would break the next answer or
    the connection (before: the agent's 404 to a HEAD failed in h11 and dropped it)."""
    proxy, nginx = mesh
    page = text(5000, seed=1)
    (nginx.root / "files" / "page.txt").write_bytes(page)
    url = f"http://127.0.0.1:{proxy.port}"
    fmt = "%{http_code} %{num_connects} %{size_download}\\n"
    out = curl(
        "-I", "-w", fmt, f"{url}/files/page.txt",
        "--next", "-o", "/dev/null", "-w", fmt, "-H", f"If-Modified-Since: {LATER}",
        f"{url}/files/page.txt",
        "--next", "-I", "-o", "/dev/null", "-w", fmt, f"{url}/elsewhere",
        "--next", "-o", "/dev/null", "-w", fmt, f"{url}/files/page.txt",
    )  # fmt: skip
    head, _, rows = out.partition("\n\n")  # text mode: curl's CRLFs read as LFs
    assert f"content-length: {len(page)}" in head.lower(), head
    assert rows.split("\n")[:4] == ["200 1 0", "304 0 0", "404 0 0", f"200 0 {len(page)}"], out


def test_an_http10_client_gets_a_chunked_answer_unframed_then_the_close(mesh, tmp_path) -> None:
    """HTTP/1.0 has no chunked coding: nginx's chunked (gzip) answer reaches a 1.0 client
    as plain bytes ended by the connection's close."""
    proxy, nginx = mesh
    page = text(50_000, seed=2)
    (nginx.root / "files" / "page.txt").write_bytes(page)
    got = tmp_path / "got.gz"
    head = curl("-0", "-D", "-", "-o", str(got), "-H", "Accept-Encoding: gzip",
                f"http://127.0.0.1:{proxy.port}/files/page.txt")  # fmt: skip
    lower = head.lower()
    assert "transfer-encoding" not in lower and "connection: close" in lower, head
    assert gzip.decompress(got.read_bytes()) == page


def read_until_closed(s: socket.socket, within: float) -> tuple[bytes, bool]:
    """What `s` receives until its peer closes it or `within` s pass; and whether it closed."""
    s.settimeout(within)
    out = bytearray()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return bytes(out), True
        out += chunk
    return bytes(out), False


def exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send `data` at once, read until the agent closes the connection (fails on a hang)."""
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(data)
        out, closed = read_until_closed(s, timeout)
    if not closed:
        pytest.fail(f"the connection was still open after {timeout} s: {out!r}")
    return out


def test_pipelined_requests_are_answered_in_order(mesh) -> None:
    """Three requests in one write (GET, HEAD, GET with Connection: close): three answers, in
    order, the HEAD's without a body, then the close."""
    proxy, nginx = mesh
    for name in "abc":
        (nginx.root / "files" / f"{name}.txt").write_bytes(name.encode() * 5 + b"\n")
    reqs = b"".join(
        b"%s /files/%s.txt HTTP/1.1\r\nHost: web\r\n%s\r\n" % (m, n, extra)
        for m, n, extra in [
            (b"GET", b"a", b""),
            (b"HEAD", b"b", b""),
            (b"GET", b"c", b"Connection: close\r\n"),
        ]
    )
    out = exchange(proxy.port, reqs)
    answers = [b"HTTP/1.1 " + a for a in out.split(b"HTTP/1.1 ")[1:]]
    assert len(answers) == 3, out
    assert answers[0].startswith(b"HTTP/1.1 200") and answers[0].endswith(b"\r\n\r\naaaaa\n")
    assert answers[1].startswith(b"HTTP/1.1 200") and answers[1].endswith(b"\r\n\r\n")
    assert b"content-length: 6" in answers[1].lower(), answers[1]
    assert answers[2].startswith(b"HTTP/1.1 200") and answers[2].endswith(b"\r\n\r\nccccc\n")
    assert b"connection: close" in answers[2].lower(), answers[2]


@pytest.mark.parametrize(
    "bad",
    [
        b"GET /files/a.txt HTTP/1.1 extra\r\nHost: web\r\n\r\n",
        b"GET /files/a.txt HTTP/1.1\r\nHost : web\r\n\r\n",
        b"GET /files/a.txt HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"POST /files/a.txt HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["request-line", "header-name", "no-host", "length-and-chunked"],
)
def test_a_malformed_request_is_answered_400_and_the_connection_closed(mesh, bad) -> None:
    proxy, _ = mesh
    out = exchange(proxy.port, bad)
    assert out.startswith(b"HTTP/1.1 400 "), out
    assert b"connection: close" in out.lower(), out


def test_a_malformed_request_after_a_good_one_still_gets_the_good_answer(mesh) -> None:
    proxy, nginx = mesh
    (nginx.root / "files" / "a.txt").write_bytes(b"aaaaa\n")
    out = exchange(proxy.port, b"GET /files/a.txt HTTP/1.1\r\nHost: web\r\n\r\nNOT HTTP\r\n\r\n")
    first, _, second = out.partition(b"aaaaa\n")
    assert first.startswith(b"HTTP/1.1 200"), out
    assert second.startswith(b"HTTP/1.1 400"), out


async def test_curl_keeps_one_connection_for_a_series_of_requests(mesh) -> None:
    """Keep-alive both ways: ten GETs from one curl use one client connection, and the agent
    reuses one upstream connection for them."""
    proxy, nginx = mesh
    (nginx.root / "files" / "a.txt").write_bytes(b"aaaaa\n")
    url = f"http://127.0.0.1:{proxy.port}/files/a.txt"
    out = await run("curl", "-s", "-w", "%{num_connects}\\n", *[url] * 10)
    assert out.split() == ["aaaaa", "1"] + ["aaaaa", "0"] * 9, out
    assert proxy.upstreams.opened == 1


def test_an_upgrade_is_refused_501_and_closed_an_unrouted_one_is_a_404_and_kept(mesh) -> None:
    """The L7 path never switches protocols (a connection's first request that asks to is
    left on the relay before the L7 path takes it): a later one is refused 501 and the
    connection closed. An Upgrade or a CONNECT that no rule matches is a plain 404, and the
    connection goes on as HTTP (the switch was declined)."""
    proxy, nginx = mesh
    (nginx.root / "files" / "a.txt").write_bytes(b"aaaaa\n")
    get = b"GET /files/a.txt HTTP/1.1\r\nHost: web\r\n"
    upgrade = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
    out = exchange(proxy.port, get + b"\r\n" + get + upgrade + b"\r\n")
    first, _, second = out.partition(b"aaaaa\n")
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 501"), out
    for ask in (b"GET /elsewhere HTTP/1.1\r\nHost: web\r\n" + upgrade + b"\r\n",
                b"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n"):  # fmt: skip
        out = exchange(proxy.port, ask + get + b"Connection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 404") and out.endswith(b"aaaaa\n"), out
        assert out.count(b"HTTP/1.1 200") == 1, out


def test_an_answer_before_the_whole_body_goes_to_the_client_at_once(mesh, tmp_path) -> None:
    """curl uploads 4 MB at 1 MB/s to a location taking 1 KiB: nginx answers 413 from the head,
    drops what follows for a second, then closes. Through the agent curl gets the 413 as it
    does from nginx directly, at once, and stops sending. Before, the agent sent on until
    nginx closed, then answered 502 (any upload longer than nginx's default 30 s did)."""
    proxy, nginx = mesh
    upload = tmp_path / "big"
    upload.write_bytes(b"x" * 4_000_000)
    out = {}
    for name, port in (("direct", nginx.port), ("mesh", proxy.port)):
        start = time.monotonic()
        code = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "Expect:", "--limit-rate", "1M",
                    "--data-binary", f"@{upload}", f"http://127.0.0.1:{port}/small/up")  # fmt: skip
        out[name] = (code, time.monotonic() - start < 2)
    assert out == {"direct": ("413", True), "mesh": ("413", True)}, out
    assert proxy.upstreams.idle.get(("127.0.0.1", nginx.port), []) == []  # not reused
    assert proxy.observed[-1].status == 413


def test_chunked_trailers_pass_through_to_the_client(mesh) -> None:
    """nginx ends a chunked (gzip) answer with a trailer field: curl gets it through the agent
    as it does directly. Before, the agent dropped trailers."""
    proxy, nginx = mesh
    (nginx.root / "files" / "t").mkdir()
    (nginx.root / "files" / "t" / "a.txt").write_bytes(text(5000, seed=3))
    heads = [
        curl(
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-H",
            "Accept-Encoding: gzip",
            f"http://127.0.0.1:{port}/files/t/a.txt",
        )  # fmt: skip
        for port in (nginx.port, proxy.port)
    ]
    for head in heads:  # curl writes the trailer after the head's empty line
        assert "transfer-encoding: chunked" in head.lower(), head
        assert head.endswith("\n\nx-checksum: sum-of-/files/t/a.txt\n"), head


def test_hop_by_hop_headers_and_those_connection_names_are_dropped() -> None:
    plain = [
        (b"Host", b"web"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Content-Length", b"3"),
        (b"X-Secret", b"1"),
    ]
    assert hop_by_hop_dropped(plain) == [
        (b"Host", b"web"),
        (b"Content-Length", b"3"),
        (b"X-Secret", b"1"),
    ]
    named = [
        (b"Host", b"web"),
        (b"Connection", b"Keep-Alive, X-Secret"),
        (b"x-secret", b"1"),
        (b"TE", b"trailers"),
        (b"connection", b"close"),
        (b"Transfer-Encoding", b"chunked"),  # framing: never dropped, even when named
        (b"X-Kept", b"2"),
    ]
    named.append((b"CONNECTION", b"transfer-encoding, x-other"))
    named.append((b"X-Other", b"3"))
    want = [(b"Host", b"web"), (b"Transfer-Encoding", b"chunked"), (b"X-Kept", b"2")]
    assert hop_by_hop_dropped(named) == want
    assert hop_by_hop_dropped(named, [n.lower() for n, _ in named]) == want
