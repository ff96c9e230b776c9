"""The TLS layer under every agent-to-agent connection: what it hands to the layer above."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nodeagent.proxy.tlslayer import BATCH, READ_CHUNK, TlsLayer


def _contexts(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tlslayer-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.calls.append(data)

    def eof_received(self) -> bool:
        self.ended.set_result(None)
        return True


async def test_a_burst_of_records_goes_up_in_few_calls_whole_and_in_order(tmp_path: Path) -> None:
    """A bulk stream: the records that came in one read from the socket go up together (up to
    BATCH bytes a call), not one 16 KiB record a call, which cost the relay one write each."""
    server_ctx, client_ctx = _contexts(tmp_path)
    loop = asyncio.get_running_loop()
    sink = _Sink()
    accepted: list[TlsLayer] = []

    def accept() -> TlsLayer:
        accepted.append(TlsLayer(server_ctx, sink, server_side=True))
        return accepted[-1]

    server = await loop.create_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    raw, layer = await loop.create_connection(
        lambda: TlsLayer(client_ctx, asyncio.Protocol(), server_side=False), "127.0.0.1", port
    )
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
    assert len(got) == len(payload) and hashlib.sha256(got).digest() == hashlib.sha256(
        payload
    ).digest()
    sizes = [len(c) for c in sink.calls]
    assert max(sizes) <= BATCH + READ_CHUNK, max(sizes)
    # One record a call would be >= 256 calls of <= 16 KiB.
    assert max(sizes) > READ_CHUNK, sizes[:20]
    assert len(sizes) < len(payload) // READ_CHUNK // 2, len(sizes)
