"""TLS 1.3 mTLS between two in-memory SSLContexts on loopback, as two agents would use them."""

import asyncio
import os
import ssl

import pytest
from mesh_identities import EMOJI, PODS, TD, WEB

from controlplane.identity import CertificateAuthority
from nodemesh import certs, keymaker


def _certified(authority: CertificateAuthority, identity: str, node: str) -> certs.CertifiedKey:
    key = keymaker.new_key()
    issued = authority.certify(keymaker.make_csr(identity, key), identity, node=node)
    return certs.CertifiedKey.from_pem(identity, keymaker.key_pem(key), issued.chain_pem())


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
    key = keymaker.new_key()
    issued = authority.certify(keymaker.make_csr(WEB, key), WEB, node="node1")
    with pytest.raises(certs.PeerRejected, match="public key"):
        certs.CertifiedKey.from_pem(WEB, keymaker.key_pem(keymaker.new_key()), issued.chain_pem())
    with pytest.raises(certs.PeerRejected, match="not for"):
        certs.CertifiedKey.from_pem(EMOJI, keymaker.key_pem(key), issued.chain_pem())


def _handshake_with_leaf(tmp_path, sans: list[str]) -> ssl.SSLObject:
    """A client's SSLObject after a handshake (memory BIOs) with a server presenting a leaf
    with `sans` (URI SANs) issued by a CA the client trusts."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def build(subject, issuer, public, signer, *, ca, ext=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(public).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=1))
             .not_valid_after(now + datetime.timedelta(hours=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))  # fmt: skip
        if ext is not None:
            b = b.add_extension(ext, critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")])
    ca = build(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in sans])
    leaf = build(x509.Name([]), ca_name, leaf_key.public_key(), ca_key, ca=False, ext=san)
    pem = serialization.Encoding.PEM
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (tmp_path / "key.pem").write_bytes(
        leaf_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )  # fmt: skip
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "key.pem")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.load_verify_locations(cadata=ca.public_bytes(pem).decode())
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1])
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    for _ in range(10):
        for obj, out, peer_in in ((client, bios[1], bios[2]), (server, bios[3], bios[0])):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            peer_in.write(out.read())
    client.do_handshake()
    return client


def test_a_verified_peer_with_two_uri_sans_proves_no_identity(tmp_path) -> None:
    # The identity is what OpenSSL parsed of the verified certificate (getpeercert()).
    ok = _handshake_with_leaf(tmp_path, [f"spiffe://{TD}/ns/a/sa/b"])
    assert certs.peer_identity(ok) == f"spiffe://{TD}/ns/a/sa/b"
    two = _handshake_with_leaf(tmp_path, [f"spiffe://{TD}/ns/a/sa/b", f"spiffe://{TD}/ns/c/sa/d"])
    with pytest.raises(certs.PeerRejected, match="2 URI SANs"):
        certs.peer_identity(two)
