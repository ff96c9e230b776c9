"""The agent's identity client against the real Identity service on loopback gRPC."""

from __future__ import annotations

import asyncio
import datetime
import sys
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from dp_identities import API, PODS, TD, WEB
from prometheus_client import CollectorRegistry

from controlplane.agent_auth import AgentAuthInterceptor
from controlplane.identity import BootstrapTokenAuthenticator, CertificateAuthority
from controlplane.identity.service import IdentityService
from nodeagent.upstream import keygen
from nodeagent.upstream.certstore import CertStore
from nodeagent.upstream.channel import Channel, open_channel
from nodeagent.upstream.identity import IdentityClient
from nodemesh import keymaker, tasks
from nodemesh.identity import CaMaterial

TOKEN = "token-of-node1-" + "x" * 24
OTHER = f"spiffe://{TD}/ns/shop/sa/not-here"


async def _serve(authority: CertificateAuthority) -> tuple[grpc.aio.Server, int]:
    auth = AgentAuthInterceptor(BootstrapTokenAuthenticator({"node1": TOKEN}))
    server = grpc.aio.server(interceptors=[auth])
    IdentityService(authority=authority, registry=CollectorRegistry()).add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
async def channel_to(
    authority: CertificateAuthority,
) -> AsyncIterator[Callable[..., Channel]]:
    servers: list[grpc.aio.Server] = []
    channels: list[Channel] = []

    async def make(
        lifetime: datetime.timedelta = datetime.timedelta(hours=24), token: str = TOKEN
    ) -> Channel:
        ca = CertificateAuthority(
            anchors=authority.anchors,
            issuer=authority.issuer,
            trust_domain=TD,
            pods_on_node=lambda node: iter(PODS.get(node, [])),
            lifetime=lifetime,
        )
        server, port = await _serve(ca)
        servers.append(server)
        channels.append(open_channel(f"127.0.0.1:{port}", insecure=True, token=lambda: token))
        return channels[-1]

    yield make  # type: ignore[misc]
    for ch in channels:
        ch.close()
    for s in servers:
        await s.stop(None)


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_certificates_for_the_nodes_identities_are_fetched_and_valid(
    channel_to, anchor: CaMaterial
) -> None:
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    client = IdentityClient(channel=await channel_to(), store=store, wanted=lambda: {WEB, API})
    task = tasks.spawn(client.run(), name="identity client")
    try:
        await _until(lambda: WEB in store.held and API in store.held)
    finally:
        await tasks.cancel_all([task])
    held = store.held[WEB]
    keymaker.verify_peer_certificate(
        keymaker.load_chain(held.certified.chain_pem())[0],
        intermediates=keymaker.load_chain(held.certified.chain_pem())[1:],
        trust_anchors=[anchor.certificate],
        expected=WEB,
    )
    assert client.failures == 0


async def test_renewed_before_expiry_with_a_new_key(channel_to, anchor: CaMaterial) -> None:
    # The store's clock jumps to the renewal time (2/3 of the life): the client must ask
    # again on its own, with a fresh key, while the old certificate keeps serving.
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    client = IdentityClient(
        channel=await channel_to(datetime.timedelta(seconds=30)),
        store=store,
        wanted=lambda: {WEB},
    )
    task = tasks.spawn(client.run(), name="identity client")
    try:
        await _until(lambda: WEB in store.held)
        first = store.held[WEB]
        assert first.renew_at > store.clock()
        store.clock = lambda: first.renew_at + 0.01  # time passes
        client.kick()
        await _until(lambda: store.held[WEB] is not first)
    finally:
        await tasks.cancel_all([task])
    second = store.held[WEB]
    assert second.certified.key_pem != first.certified.key_pem
    second_leaf = keymaker.load_chain(second.certified.chain_pem())[0]
    first_leaf = keymaker.load_chain(first.certified.chain_pem())[0]
    assert second_leaf.public_key() != first_leaf.public_key()
    assert second_leaf.serial_number != first_leaf.serial_number


async def test_refusals_back_off_and_do_not_stop_the_others(channel_to, anchor) -> None:
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    client = IdentityClient(channel=await channel_to(), store=store, wanted=lambda: {WEB, OTHER})
    task = tasks.spawn(client.run(), name="identity client")
    try:
        await _until(lambda: WEB in store.held and client.failures >= 1)
        await asyncio.sleep(0.3)
        # PERMISSION_DENIED for a workload with no pod here: asked again only after backoff.
        assert 1 <= client.failures <= 2
    finally:
        await tasks.cancel_all([task])
    assert OTHER not in store.held


async def test_a_bad_token_gets_nothing(channel_to, anchor) -> None:
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    client = IdentityClient(
        channel=await channel_to(token="wrong"), store=store, wanted=lambda: {WEB}
    )
    assert not await client.certify(WEB)
    assert store.held == {} and client.failures == 1


async def test_a_key_maker_that_fails_backs_off_and_the_next_one_serves(channel_to, anchor) -> None:
    # Keys are made by a child process; one that dies costs a backoff, not the agent.
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    client = IdentityClient(
        channel=await channel_to(),
        store=store,
        wanted=lambda: {WEB, API},
        keymaker=(sys.executable, "-c", "import sys; sys.exit('no keys today')"),
    )
    task = tasks.spawn(client.run(), name="identity client")
    try:
        await _until(lambda: client.failures >= 2)
        assert store.held == {}
        client.keymaker = keygen.KEYMAKER
        await _until(lambda: WEB in store.held and API in store.held)
    finally:
        await tasks.cancel_all([task])


async def test_a_refused_identity_is_asked_again_with_the_key_already_made(
    channel_to, anchor, tmp_path
) -> None:
    """A new pod's first Certify is often refused (the control plane has not seen the pod on
    this node yet); each retry must not wait for another key-maker child (seconds on a busy
    node): the key made for the refused attempt is used again."""
    runs = tmp_path / "runs"
    counting = (sys.executable, "-c",
                f"import runpy, sys; open({str(runs)!r}, 'a').write('x');"
                "sys.exit(runpy.run_module('nodemesh.keymaker', run_name='keymaker')['main']())")  # fmt: skip
    store = CertStore(trust_anchors_pem=anchor.certificate_pem())
    client = IdentityClient(
        channel=await channel_to(), store=store, wanted=lambda: {OTHER}, keymaker=counting
    )
    task = tasks.spawn(client.run(), name="identity client")
    try:
        await _until(lambda: client.failures >= 3)
    finally:
        await tasks.cancel_all([task])
    assert runs.read_text() == "x", f"{len(runs.read_text())} key-maker runs for one identity"
    assert OTHER in client.spare
