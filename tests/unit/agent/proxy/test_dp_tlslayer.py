"""The TLS layer under every agent-to-agent connection (with the agents' own mTLS contexts):
what it hands to the layer above."""

from __future__ import annotations

import asyncio
import hashlib
import os

from dp_identities import API, WEB, issue

from controlplane.identity import CertificateAuthority
from nodeagent.proxy.tlslayer import BATCH, READ_CHUNK, TlsLayer
from nodeagent.upstream.certstore import server_name
from nodemesh import certs
from nodemesh.identity import CaMaterial


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.calls.append(data)

    def eof_received(self) -> bool:
        self.ended.set_result(None)
        return True


async def test_a_burst_of_records_goes_up_in_few_calls_whole_and_in_order(
    anchor: CaMaterial, authority: CertificateAuthority
) -> None:
    """A bulk stream: the records that came in one read from the socket go up together (up to
    BATCH bytes a call), not one 16 KiB record a call, which cost the relay one write each."""
    anchors = anchor.certificate_pem()
    server_ctx = certs.server_context(issue(authority, API), trust_anchors_pem=anchors)
    client_ctx = certs.client_context(issue(authority, WEB), trust_anchors_pem=anchors)
    loop = asyncio.get_running_loop()
    sink = _Sink()
    accepted: list[TlsLayer] = []

    def accept() -> TlsLayer:
        accepted.append(TlsLayer(server_ctx, sink, server_side=True))
        return accepted[-1]

    server = await loop.create_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    raw, layer = await loop.create_connection(
        lambda: TlsLayer(
            client_ctx, asyncio.Protocol(), server_side=False,
            server_hostname=server_name(API),
        ),
        "127.0.0.1",
        port,
    )  # fmt: skip
    try:
        await asyncio.wait_for(layer.handshake, 10)
        payload = os.urandom(4 << 20)
        layer.app.write(payload)
        layer.app.write_eof()
        await asyncio.wait_for(sink.ended, 20)
    finally:
        raw.close()
        for one in accepted:
            if one.raw is not None:
                one.raw.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)  # the transports' close callbacks
    got = b"".join(sink.calls)
    assert (
        len(got) == len(payload)
        and hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    )
    sizes = [len(c) for c in sink.calls]
    assert max(sizes) <= BATCH + READ_CHUNK, max(sizes)
    # One record a call would be >= 256 calls of <= 16 KiB.
    assert max(sizes) > READ_CHUNK, sizes[:20]
    assert len(sizes) < len(payload) // READ_CHUNK // 2, len(sizes)
