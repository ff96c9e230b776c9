"""Fail closed: with no table the outbound listener holds a connection, then resets it (never
plaintext); with a table it routes; a meshed target is never reached in the clear. The outbound
handler runs on loopback as in test_dp_outbound: only the original destination and the socket
factory are swapped."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from dp_clients import ask as _ask
from dp_sinks import RecordingSink
from dp_tables import pod, table

from nodeagent.pod import PodAddress
from nodeagent.proxy import outbound
from nodeagent.proxy.failclosed import Upstream, Wait, table_wait, upstream
from nodeagent.proxy.listeners import PodListeners, ProxyRuntime
from nodeagent.upstream.table import DestinationTable
from nodemesh import destination_codec as codec
from nodemesh.api import destination_pb2 as pb

HOLD = 0.6


@pytest.mark.parametrize(
    ("synced", "held_for", "gone", "want"),
    [
        (True, 0.0, False, Wait.PROCEED),
        (True, 99.0, True, Wait.PROCEED),  # a table is there: nothing to wait for
        (False, 0.0, False, Wait.HOLD),
        (False, HOLD - 0.01, False, Wait.HOLD),
        (False, HOLD, False, Wait.REFUSE),
        (False, 0.1, True, Wait.REFUSE),  # the client left: nobody to hold for
    ],
)
def test_without_a_table_a_connection_is_held_then_refused(
    synced: bool, held_for: float, gone: bool, want: Wait
) -> None:
    assert table_wait(synced=synced, held_for=held_for, client_gone=gone, limit=HOLD) is want


@pytest.mark.parametrize(
    ("meshed", "identity", "mtls", "want"),
    [
        (True, "spiffe://td/ns/a/sa/b", True, Upstream.TUNNEL),
        (True, "", True, Upstream.REFUSE),  # nothing to present: refuse, never plaintext
        (False, "spiffe://td/ns/a/sa/b", True, Upstream.PLAIN),  # genuinely unmeshed
        (False, "", True, Upstream.PLAIN),
        (True, "spiffe://td/ns/a/sa/b", False, Upstream.PLAIN),  # no trust anchor configured
    ],
)
def test_a_meshed_target_is_tunnelled_or_refused(
    meshed: bool, identity: str, mtls: bool, want: Upstream
) -> None:
    assert upstream(meshed=meshed, source_identity=identity, mtls=mtls) is want


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read()
    writer.write(b"plaintext reached the app: " + data)
    await writer.drain()
    writer.close()


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[dict[str, object]]:
    """The pod's outbound listener with a live app as the original destination and an agent
    that has no table yet."""
    app = await asyncio.start_server(_answer, "127.0.0.1", 0)
    dest = app.sockets[0].getsockname()[:2]
    monkeypatch.setattr(outbound, "original_destination", lambda sock: dest)
    monkeypatch.setattr(outbound, "SYNC_WAIT", HOLD)

    def plain_socket(netns: str, *, mark: int) -> socket.socket:
        s = socket.socket()
        s.setblocking(False)
        return s

    monkeypatch.setattr(outbound, "marked_socket", plain_socket)
    sink = RecordingSink()
    executor = ThreadPoolExecutor(1)
    runtime = ProxyRuntime(mark=1, executor=executor, table=DestinationTable("node1"), sink=sink)
    listeners = PodListeners(PodAddress("shop", "web-1", "/nonexistent", "127.0.0.1"), runtime)
    loop = asyncio.get_running_loop()
    front = await loop.create_server(
        listeners._factory(outbound.handle, listeners.outbound), "127.0.0.1", 0
    )
    yield {"port": front.sockets[0].getsockname()[1], "runtime": runtime, "sink": sink}
    front.close()
    app.close()
    await asyncio.sleep(0.05)
    assert not runtime.relays, "relays left open"
    executor.shutdown()


async def test_no_table_at_all_holds_then_resets_and_sends_nothing_plain(proxy) -> None:
    started = time.monotonic()
    assert await _ask(proxy["port"], b"GET /secret") == b"<reset>"
    assert time.monotonic() - started >= HOLD * 0.9  # held first, in case a table came
    sink: RecordingSink = proxy["sink"]  # type: ignore[assignment]
    (closed,) = sink.closed
    assert closed.error.startswith("no destination table yet") and not closed.tls


async def test_a_table_arriving_during_the_hold_lets_the_connection_through(proxy) -> None:
    runtime: ProxyRuntime = proxy["runtime"]  # type: ignore[assignment]
    asking = asyncio.ensure_future(_ask(proxy["port"], b"hello"))
    await asyncio.sleep(HOLD / 3)
    assert not asking.done()  # held
    # The table comes (from the control plane or the saved state): the app's address is not
    # in it, so it is genuinely outside the mesh and the connection goes where it was going.
    snap = pb.Snapshot(pods=[codec.pod_to_pb(pod("web-1", "127.0.0.1"))], last=True)
    runtime.table.apply(pb.Update(revision=1, snapshot=snap))
    assert await asking == b"plaintext reached the app: hello"


async def test_a_known_table_routes_at_once(proxy) -> None:
    runtime: ProxyRuntime = proxy["runtime"]  # type: ignore[assignment]
    runtime.table = table([], [pod("web-1", "127.0.0.1")])
    runtime.routes.table = runtime.table
    started = time.monotonic()
    assert await _ask(proxy["port"], b"x") == b"plaintext reached the app: x"
    assert time.monotonic() - started < HOLD
