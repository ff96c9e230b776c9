"""Fixtures for the control plane tests: gRPC servers on loopback, torn down on any outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

Registrar = Callable[[grpc.aio.Server], None]


@pytest.fixture
async def grpc_server() -> AsyncIterator[Callable[[Registrar], Awaitable[str]]]:
    """`await grpc_server(register)` starts a server on 127.0.0.1 and returns its address."""
    servers: list[grpc.aio.Server] = []

    async def start(register: Registrar) -> str:
        server = grpc.aio.server()
        register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(grace=None)


@pytest.fixture
async def channels() -> AsyncIterator[Callable[..., grpc.aio.Channel]]:
    opened: list[grpc.aio.Channel] = []

    def open_channel(address: str, **options: object) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(address, options=list(options.items()))
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        await channel.close()
    await asyncio.sleep(0)
