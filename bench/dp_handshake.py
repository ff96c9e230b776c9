"""What a new tunnelled connection costs with and without TLS session resumption (loopback).

    .venv/bin/python bench/dp_handshake.py [N]

Source and destination relays with the real TLS layer, certificates and preamble (as in
tests/unit/agent/proxy/test_dp_tunnel.py) in one uvloop process, in front of an app answering one
HTTP request per connection: N fresh connections one after another, wall time and process CPU
per connection, for each setting. Both agents' work is in the one process, so CPU is the
source's plus the destination's.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import uvloop

_UNIT = Path(__file__).resolve().parents[1] / "tests" / "unit" / "agent"
sys.path[:0] = [str(_UNIT), str(_UNIT / "proxy")]
import dp_identities as cf  # noqa: E402
import test_dp_tunnel as harness  # noqa: E402

from controlplane.identity import CertificateAuthority  # noqa: E402
from nodeagent.protocol import preamble as pre  # noqa: E402
from nodeagent.proxy.routing import Target  # noqa: E402
from nodeagent.proxy.tunnel import accept_tunnel, open_tunnel, reply  # noqa: E402
from nodeagent.upstream.certstore import CertStore  # noqa: E402
from nodemesh import identity as certs  # noqa: E402


async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()
    writer.close()


async def measure(n: int, resume: bool, anchor, authority) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    store = CertStore(trust_anchors_pem=anchor.certificate_pem(), resume=resume)
    store.want({cf.WEB, cf.API})
    src, dst = (
        store.install(cf.issue(authority, cf.WEB)),
        store.install(cf.issue(authority, cf.API)),
    )
    server = await asyncio.start_server(app, "127.0.0.1", 0)
    app_port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    resumed = 0

    async def destination(relay):  # type: ignore[no-untyped-def]
        _, header = await accept_tunnel(relay, held=dst)
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", header.target_port))
        await relay.open_upstream(s)
        reply(relay, pre.ReplyCode.ACCEPTED)
        relay.start()

    dst_agent = harness.Agent(destination)
    dport = await dst_agent.start()

    async def source(relay):  # type: ignore[no-untyped-def]
        nonlocal resumed
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", dport))
        target = Target("127.0.0.1", app_port, meshed=True, identity=cf.API)
        resumed += await open_tunnel(
            relay, s, held=src, target=target, source_namespace="a", source_pod="b", resume=resume
        )
        relay.start()

    src_agent = harness.Agent(source)
    sport = await src_agent.start()
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        r, w = await asyncio.open_connection("127.0.0.1", sport)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await r.read()).endswith(b"ok")
        w.close()
    wall, cpu = (time.perf_counter() - t0) / n, (time.process_time() - cpu0) / n
    src_agent.close()
    dst_agent.close()
    server.close()
    return wall, cpu, resumed


async def main(n: int) -> None:
    anchor = certs.create_trust_anchor(trust_domain=cf.TD)
    authority = CertificateAuthority(
        anchors=[anchor.certificate],
        issuer=certs.create_issuer(anchor, trust_domain=cf.TD),
        trust_domain=cf.TD,
        pods_on_node=lambda node: iter(()),
    )
    for resume in (False, True, False, True):
        wall, cpu, resumed = await measure(n, resume, anchor, authority)
        print(
            f"resumption {'on ' if resume else 'off'}: {wall * 1000:.2f} ms wall, "
            f"{cpu * 1000:.2f} ms CPU per new connection (both agents), {resumed}/{n} resumed"
        )


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 500))
