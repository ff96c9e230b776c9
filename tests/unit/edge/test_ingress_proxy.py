"""The edge proxy on loopback: requests reach the backend the rules name with X-Forwarded-*
set, connections are kept alive on both sides, refusals carry their status, and TLS is
terminated with the certificate SNI picks."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import h11
import pytest

from ingress.proxy import Edge
from ingress.state import Objects
from ingress.tls import Terminator
from tests.unit.edge.certgen import CA, tls_secret
from tests.unit.edge.test_ingress_rules import ing, path, rule
from tests.unit.edge.test_ingress_state import service, slice_of


async def backend(name: str) -> tuple[asyncio.Server, list[int]]:
    """An HTTP/1.1 server answering each request with its name, path and headers (JSON)."""
    connections: list[int] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        connections.append(1)
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await r.read(65536)
                conn.receive_data(data)
                if not data:
                    break
                continue
            if isinstance(event, h11.Request):
                req = event
            elif isinstance(event, h11.EndOfMessage):
                body = json.dumps({"backend": name, "path": req.target.decode(),
                                   "headers": [[n.decode(), v.decode()] for n, v in req.headers]}).encode()  # fmt: skip
                w.write(conn.send(h11.Response(status_code=200, headers=[
                    (b"content-length", str(len(body)).encode()), (b"connection", b"keep-alive")])))  # fmt: skip
                w.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                await w.drain()
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                break
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, connections


class Client:
    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w, self.conn = r, w, h11.Connection(h11.CLIENT)

    async def get(
        self, host: str, target: str, headers: list[tuple[str, str]] = ()
    ) -> tuple[int, Any]:  # type: ignore[assignment]
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        self.w.write(self.conn.send(h11.Request(method="GET", target=target,
                                                headers=[("host", host), *headers])))  # fmt: skip
        self.w.write(self.conn.send(h11.EndOfMessage()))
        status, body = 0, b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await asyncio.wait_for(self.r.read(65536), 10))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode()


@pytest.fixture
async def edge() -> AsyncIterator[dict[str, Any]]:
    web, web_conns = await backend("web")
    api, api_conns = await backend("api")
    ports = {s: srv.sockets[0].getsockname()[1] for s, srv in (("web", web), ("api", api))}
    ca = CA()
    crt, key = ca.issue("shop.example")
    o = Objects()
    for obj in (
        ing("a", rules=[rule("shop.example", path("/", "web", port=ports["web"]),
                             path("/api", "api", port=ports["api"])),
                        rule("empty.example", path("/", "empty"))],
            tls=[{"hosts": ["shop.example"], "secretName": "shop-tls"}]),
        service("web", "127.0.0.1", [{"port": ports["web"]}]), slice_of("web"),
        service("api", "127.0.0.1", [{"port": ports["api"]}]), slice_of("api"),
        service("empty"), slice_of("empty", ready=False),
        tls_secret("shop", "shop-tls", crt, key),
    ):  # fmt: skip
        o.put(obj["kind"], obj)
    snap = o.snapshot()
    e = Edge(lambda: snap)
    term = Terminator(lambda: snap)
    plain = await asyncio.start_server(lambda r, w: e.serve(r, w, scheme="http"), "127.0.0.1", 0)
    tls = await asyncio.start_server(lambda r, w: e.serve(r, w, scheme="https"), "127.0.0.1", 0,
                                     ssl=term.context)  # fmt: skip
    yield {"edge": e, "http": plain.sockets[0].getsockname()[1], "ca": ca,
           "https": tls.sockets[0].getsockname()[1], "web_conns": web_conns, "api_conns": api_conns}  # fmt: skip
    e.close()
    await asyncio.sleep(0.2)  # the servers' handlers see their connections end
    for s in (plain, tls, web, api):
        s.close()
        await s.wait_closed()


async def test_routes_forwarded_headers_and_keep_alive(edge: dict[str, Any]) -> None:
    c = Client(*await asyncio.open_connection("127.0.0.1", edge["http"]))
    seen = []
    for i in range(3):
        status, body = await c.get("shop.example", f"/api/v1?i={i}",
                                   [("x-forwarded-for", "203.0.113.7")])  # fmt: skip
        seen.append((status, body["backend"], body["path"]))
    status, body = await c.get("Shop.Example:80", "/index.html")
    seen.append((status, body["backend"], body["path"]))
    assert seen == [(200, "api", "/api/v1?i=0"), (200, "api", "/api/v1?i=1"),
                    (200, "api", "/api/v1?i=2"), (200, "web", "/index.html")]  # fmt: skip
    headers = dict((n, v) for n, v in body["headers"])
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["host"] == "Shop.Example:80"
    _, body = await c.get("shop.example", "/api")
    xff = [v for n, v in body["headers"] if n == "x-forwarded-for"]
    assert xff == ["127.0.0.1"]
    # One client connection, one connection to each backend: kept alive on both sides.
    assert (len(edge["api_conns"]), len(edge["web_conns"])) == (1, 1)
    _, body = await c.get("shop.example", "/api", [("x-forwarded-for", "203.0.113.7")])
    assert [v for n, v in body["headers"] if n == "x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    c.w.close()
    await c.w.wait_closed()


async def test_refusals_404_and_503_keep_the_connection(edge: dict[str, Any]) -> None:
    c = Client(*await asyncio.open_connection("127.0.0.1", edge["http"]))
    assert await c.get("unknown.example", "/") == (
        404,
        "no Ingress rule matches this host and path\n",
    )
    assert await c.get("empty.example", "/") == (503, "Service shop/empty has no ready endpoints\n")
    status, body = await c.get("shop.example", "/")
    assert (status, body["backend"]) == (200, "web")
    c.w.close()
    await c.w.wait_closed()


async def test_tls_terminated_with_the_sni_certificate(edge: dict[str, Any]) -> None:
    ctx = ssl.create_default_context(cadata=edge["ca"].pem.decode())
    r, w = await asyncio.open_connection("127.0.0.1", edge["https"], ssl=ctx,
                                         server_hostname="shop.example")  # fmt: skip
    c = Client(r, w)
    status, body = await c.get("shop.example", "/api/x")
    assert (status, body["backend"]) == (200, "api")
    assert dict((n, v) for n, v in body["headers"])["x-forwarded-proto"] == "https"
    w.close()
    await w.wait_closed()
    # A name no Ingress has a certificate for gets the default one, which does not verify.
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection("127.0.0.1", edge["https"], ssl=ctx,
                                      server_hostname="other.example")  # fmt: skip


async def test_a_body_with_expect_100_continue_is_sent_without_waiting(
    edge: dict[str, Any],
) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", edge["http"])
    w.write(b"POST /api/upload HTTP/1.1\r\nhost: shop.example\r\ncontent-length: 5\r\n"
            b"expect: 100-continue\r\n\r\n")  # fmt: skip
    await w.drain()
    first = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
    assert first.startswith(b"HTTP/1.1 100 ")
    w.write(b"hello")
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    w.close()
    await w.wait_closed()


async def test_draining_closes_each_connection_after_its_answer(edge: dict[str, Any]) -> None:
    c = Client(*await asyncio.open_connection("127.0.0.1", edge["http"]))
    assert (await c.get("shop.example", "/"))[0] == 200
    edge["edge"].draining = True
    status, _ = await c.get("shop.example", "/")
    assert status == 200
    assert await asyncio.wait_for(c.r.read(), 5) == b""  # the ingress closed the connection
    c.w.close()
    await c.w.wait_closed()
