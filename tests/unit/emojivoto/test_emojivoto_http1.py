"""The vote-bot's HTTP/1.1 client and counters: parsing, keep-alive reuse, every failure counted."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from emojivoto import bot_stats, http1, http1_pool

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_request_is_a_keep_alive_get() -> None:
    data = http1.get_request("/api/vote?choice=:joy:", host="web-svc.emojivoto:80")
    assert data.startswith(b"GET /api/vote?choice=:joy: HTTP/1.1\r\nHost: web-svc.emojivoto:80\r\n")
    assert data.endswith(b"\r\n\r\n") and b"Connection: close" not in data
    with pytest.raises(ValueError):
        http1.get_request("/a b", host="x")


def test_parser_reads_chunked_bodies_split_anywhere() -> None:
    raw = (
        b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    parser = http1.ResponseParser()
    done = [parser.feed(raw[i : i + 1]) for i in range(len(raw))]
    assert done[-1] and not any(done[:-1])
    assert (parser.status, parser.body, parser.keep_alive) == (500, b"abc", True)


def test_parser_sees_connection_close_and_garbage() -> None:
    parser = http1.ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert not parser.keep_alive
    with pytest.raises(http1.MalformedResponse):
        http1.ResponseParser().feed(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")


def test_stats_add_up_and_classify_like_a_mesh() -> None:
    stats = bot_stats.BotStats()
    for _ in range(5):
        stats.request_sent()
    stats.request_ended(path="/api/vote", outcome="2xx", status=200, choice=":joy:")
    stats.request_ended(path="/api/vote", outcome="4xx", status=400, choice=":nope:")
    stats.request_ended(path="/api/vote", outcome="5xx", status=500, choice=":doughnut:")
    stats.request_ended(path="/api/list", outcome=bot_stats.TIMEOUT)
    snap = stats.snapshot()
    assert (snap["sent"], snap["succeeded"], snap["failed"], snap["in_flight"]) == (5, 2, 2, 1)
    assert snap["by_path"] == {
        "/api/list": {"timeout": 1},
        "/api/vote": {"2xx": 1, "4xx": 1, "5xx": 1},
    }
    assert snap["by_status"] == {"200": 1, "400": 1, "500": 1}
    assert snap["by_choice"][":doughnut:"] == {"5xx": 1}


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    """Starts loopback servers running `handler` per connection; ends all of them afterwards."""
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: Handler) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            writers.append(writer)
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # the client went away: that is what these tests provoke
            finally:
                handlers.discard(task)

        server = await asyncio.start_server(tracked, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()
    for task in list(handlers):
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    for writer in writers:
        writer.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def _client(port: int, timeout_s: float = 2.0) -> http1_pool.Http1Client:
    return http1_pool.Http1Client("127.0.0.1", port, host_header="t", timeout_s=timeout_s)


async def test_connection_is_reused_and_a_stale_one_is_retried_once(serve) -> None:
    answered = 0

    async def two_answers_per_connection(reader, writer) -> None:
        nonlocal answered
        for _ in range(2):
            await _read_request(reader)
            answered += 1
            writer.write(OK)
            await writer.drain()
        # Takes a third request and hangs up without a byte of answer, as a server closing an
        # idle keep-alive connection does when the request crosses its close on the wire.
        await _read_request(reader)
        writer.close()

    client = _client(await serve(two_answers_per_connection))
    try:
        statuses = [(await client.get("/")).status for _ in range(3)]
    finally:
        client.close()
    assert statuses == [200, 200, 200]
    assert answered == 3
    assert (client.connections_opened, client.stale_retries) == (2, 1)


async def test_a_connection_the_server_closed_while_idle_is_not_reused(serve) -> None:
    async def one_answer_then_close(reader, writer) -> None:
        await _read_request(reader)
        writer.write(OK)
        await writer.drain()
        writer.close()

    client = _client(await serve(one_answer_then_close))
    try:
        for _ in range(3):
            assert (await client.get("/")).status == 200
            await asyncio.sleep(0.05)  # the close arrives before the next request
    finally:
        client.close()
    assert (client.connections_opened, client.stale_retries) == (3, 0)


async def test_no_answer_is_a_timeout(serve) -> None:
    async def silent(reader, writer) -> None:
        await _read_request(reader)
        await asyncio.sleep(5)

    client = _client(await serve(silent), timeout_s=0.2)
    with pytest.raises(http1_pool.RequestTimedOut):
        await client.get("/")


async def test_refused_and_cut_off_are_connection_failures(serve) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(http1_pool.ConnectionFailed):
        await _client(closed_port).get("/")

    async def half_an_answer(reader, writer) -> None:
        await _read_request(reader)
        writer.write(OK[:20])
        await writer.drain()
        writer.close()

    with pytest.raises(http1_pool.ConnectionFailed):
        await _client(await serve(half_an_answer)).get("/")
