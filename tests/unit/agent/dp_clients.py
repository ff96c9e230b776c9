"""A plain client for the data-plane tests: one request, the whole answer, or "<reset>"."""

from __future__ import annotations

import asyncio


async def ask(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b"<reset>"
    finally:
        writer.close()
