"""The small ASGI plumbing the two HTTP servers share: uvicorn run under our stop event, JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import uvicorn

from nodemesh.tasks import spawn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Server(uvicorn.Server):
    # uvicorn's own handlers would re-raise SIGTERM after shutdown and kill the process before
    # our cleanup runs; the caller's stop event (lifecycle.stop_on_signals) drives shutdown instead.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    *,
    sock: socket.socket,
    stop: asyncio.Event,
    keep_alive_s: int = 30,
) -> None:
    """Serve HTTP/1.1 (keep-alive) on `sock` until `stop` is set, then drain for up to 5 s."""
    config = uvicorn.Config(
        app,
        http="httptools",
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_keep_alive=keep_alive_s,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    serving = spawn(server.serve(sockets=[sock]), name="asgi-serve")
    stopping = spawn(stop.wait(), name="asgi-stop-wait")
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        server.should_exit = True
        stopping.cancel()
        await serving


async def send_json(send: Send, status: int, body: Any) -> None:
    payload = json.dumps(body, ensure_ascii=False).encode()
    await send_bytes(send, status, payload, "application/json")


async def send_bytes(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
