"""Serving a dashboard app on loopback for the tests (a uniquely named module: `from conftest
import ...` picks whichever conftest pytest imported first)."""

from __future__ import annotations

import asyncio

import uvicorn

from nodemesh import tasks


async def serve(app: object) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", loop="none"
    )
    server = uvicorn.Server(config)
    task = tasks.spawn(server.serve(), name="test-dashboard")
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}"
