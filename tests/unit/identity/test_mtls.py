"""TLS 1.3 mTLS between two in-memory SSLContexts on loopback, as two agents would use them."""

import asyncio
import os
import ssl

import pytest
from mesh_identities import EMOJI, PODS, TD, WEB

from controlplane.identity import CertificateAuthority
from nodemesh import certs


def _certified(authority: CertificateAuthority, identity: str, node: str) -> certs.CertifiedKey:
    key = certs.new_key()
    issued = authority.certify(certs.make_csr(identity, key), identity, node=node)
    return certs.CertifiedKey.from_pem(identity, key, issued.chain_pem())


@pytest.fixture
def foreign_authority(foreign_anchor, foreign_issuer) -> CertificateAuthority:
    return CertificateAuthority(
        anchors=[foreign_anchor.certificate],
        issuer=foreign_issuer,
        trust_domain=TD,
        pods_on_node=lambda node: iter(PODS.get(node, [])),
    )


async def _exchange(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, *, expect: str):
    """Run one connection; return (what the server saw of its client, what the client read)."""
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(certs.peer_identity(writer.get_extra_info("ssl_object")))
        writer.write(b"hello from " + seen[0].encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        try:
            certs.check_peer(writer.get_extra_info("ssl_object"), expected=expect)
            data = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ssl.SSLError, ConnectionError):
                pass
        return seen, data
    finally:
        server.close()
        await server.wait_closed()


async def test_matching_identities_talk(authority, anchor) -> None:
    web = _certified(authority, WEB, "node1")
    emoji = _certified(authority, EMOJI, "node2")
    anchors = anchor.certificate_pem()
    server_ctx = certs.server_context(emoji, trust_anchors_pem=anchors)
    client_ctx = certs.client_context(web, trust_anchors_pem=anchors)
    # The memfd used to hand the key to OpenSSL is gone once the context is built.
    assert not any("nodemesh-cert" in target for target in _fd_targets())

    seen, data = await _exchange(server_ctx, client_ctx, expect=EMOJI)
    assert seen == [WEB]
    assert data == b"hello from " + WEB.encode()


def _fd_targets() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the fd listdir itself used
            pass
    return out


async def test_wrong_spiffe_id_is_rejected(authority, anchor) -> None:
    web = _certified(authority, WEB, "node1")
    emoji = _certified(authority, EMOJI, "node2")
    anchors = anchor.certificate_pem()
    with pytest.raises(certs.PeerRejected, match=f"peer is {EMOJI}, expected {WEB}"):
        await _exchange(
            certs.server_context(emoji, trust_anchors_pem=anchors),
            certs.client_context(web, trust_anchors_pem=anchors),
            expect=WEB,
        )


async def test_client_from_another_ca_is_refused(authority, foreign_authority, anchor) -> None:
    emoji = _certified(authority, EMOJI, "node2")
    intruder = _certified(foreign_authority, WEB, "node1")
    server_ctx = certs.server_context(emoji, trust_anchors_pem=anchor.certificate_pem())
    # The intruder trusts the real anchor, so only the server's check can stop it.
    client_ctx = certs.client_context(intruder, trust_anchors_pem=anchor.certificate_pem())
    try:
        seen, data = await _exchange(server_ctx, client_ctx, expect=EMOJI)
    except (ssl.SSLError, ConnectionError):
        seen, data = [], b""
    assert seen == [] and data == b""


async def test_server_from_another_ca_is_refused(authority, foreign_authority, anchor) -> None:
    web = _certified(authority, WEB, "node1")
    impostor = _certified(foreign_authority, EMOJI, "node2")
    server_ctx = certs.server_context(impostor, trust_anchors_pem=anchor.certificate_pem())
    client_ctx = certs.client_context(web, trust_anchors_pem=anchor.certificate_pem())
    with pytest.raises(ssl.SSLCertVerificationError):
        await _exchange(server_ctx, client_ctx, expect=EMOJI)


async def test_client_without_certificate_or_tls12_is_refused(authority, anchor) -> None:
    emoji = _certified(authority, EMOJI, "node2")
    server_ctx = certs.server_context(emoji, trust_anchors_pem=anchor.certificate_pem())
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        bare = ssl.create_default_context(cadata=anchor.certificate_pem().decode())
        bare.check_hostname = False
        bare.maximum_version = version
        try:
            seen, data = await _exchange(server_ctx, bare, expect=EMOJI)
        except (ssl.SSLError, ConnectionError):
            seen, data = [], b""
        assert seen == [] and data == b""


def test_renewal_at_two_thirds(authority) -> None:
    held = _certified(authority, WEB, "node1")
    life = held.not_after - held.not_before
    assert held.renew_at - held.not_before == life * 2 / 3
    assert certs.renewal_time(held.not_before, held.not_after) == held.renew_at


def test_issued_chain_must_match_our_key(authority) -> None:
    key = certs.new_key()
    issued = authority.certify(certs.make_csr(WEB, key), WEB, node="node1")
    with pytest.raises(certs.PeerRejected, match="public key"):
        certs.CertifiedKey.from_pem(WEB, certs.new_key(), issued.chain_pem())
    with pytest.raises(certs.PeerRejected, match="not for"):
        certs.CertifiedKey.from_pem(EMOJI, key, issued.chain_pem())
