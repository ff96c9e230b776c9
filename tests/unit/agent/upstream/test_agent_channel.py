"""The agent's control-plane channel (grpclib) against a real grpcio server on loopback: the
token on every call, TLS checks, the status the server ends a call with, cancellation,
deadlines, the receive limit and a connection that goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.identity import CertificateAuthority
from controlplane.identity.serving import ServingCertificate
from nodeagent.upstream import channel as channel_module
from nodeagent.upstream.channel import (
    UNARY_STREAM,
    CallFailed,
    open_channel,
    open_stream,
    parse_target,
    unary,
)
from nodemesh.api import telemetry_pb2 as pb
from nodemesh.identity import CaMaterial

UNARY = "/test.Probe/Unary"
BIDI = "/test.Probe/Bidi"
BIG = "/test.Probe/Big"


class Probe:
    """What the server saw: each call's bearer token, and the streams cancelled under it."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.cancelled = asyncio.Event()

    def _token(self, context: grpc.aio.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata() or ())
        self.tokens.append(str(metadata.get("authorization", "")))

    async def unary(self, request: pb.AgentReport, context: grpc.aio.ServicerContext) -> Any:
        self._token(context)
        if request.node == "deny":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not this node")
        if request.node == "slow":
            await asyncio.sleep(10)
        return pb.ReportAck(sequence=request.sequence, accepted=True)

    async def bidi(
        self, requests: AsyncIterator[pb.AgentReport], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReportAck]:
        self._token(context)
        try:
            async for request in requests:
                if request.node == "end-ok":
                    return  # OK, while the agent's side is still open
                if request.node == "end-denied":
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "refused: bad node")
                yield pb.ReportAck(sequence=request.sequence, accepted=True)
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def big(
        self, request: pb.AgentReport, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReportAck]:
        yield pb.ReportAck(sequence=1, reason="x" * request.sequence)


def _handlers(probe: Probe) -> grpc.GenericRpcHandler:
    ser, de = pb.ReportAck.SerializeToString, pb.AgentReport.FromString
    return grpc.method_handlers_generic_handler(
        "test.Probe",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(probe.unary, de, ser),
            "Bidi": grpc.stream_stream_rpc_method_handler(probe.bidi, de, ser),
            "Big": grpc.unary_stream_rpc_method_handler(probe.big, de, ser),
        },
    )


Serve = Callable[..., Awaitable[tuple[Probe, grpc.aio.Server, int]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[grpc.aio.Server] = []

    async def start(creds: grpc.ServerCredentials | None = None) -> tuple[Probe, Any, int]:
        probe = Probe()
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_handlers(probe),))
        if creds is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", creds)
        await server.start()
        servers.append(server)
        return probe, server, port

    yield start
    for server in servers:
        await server.stop(None)


async def test_every_call_carries_the_token_read_for_it(serve: Serve) -> None:
    probe, _, port = await serve()
    token = ["first"]
    channel = open_channel(f"127.0.0.1:{port}", insecure=True, token=lambda: token[0])
    try:
        ack = await unary(channel, UNARY, pb.AgentReport(sequence=7), pb.ReportAck, timeout=5)
        token[0] = "rotated"  # a projected token file changed under the agent
        async with open_stream(channel, BIDI, pb.AgentReport, pb.ReportAck) as call:
            await call.write(pb.AgentReport(sequence=1))
            async for got in call:
                assert got.sequence == 1
                break
    finally:
        channel.close()
    assert ack.sequence == 7 and ack.accepted
    assert probe.tokens == ["Bearer first", "Bearer rotated"]


async def test_the_status_the_server_ends_a_call_with_is_the_agents(serve: Serve) -> None:
    _, _, port = await serve()
    channel = open_channel(f"127.0.0.1:{port}", insecure=True)
    try:
        with pytest.raises(CallFailed) as unary_failed:
            await unary(channel, UNARY, pb.AgentReport(node="deny"), pb.ReportAck, timeout=5)
        # A stream the server ends while the agent's side is still open (tap, telemetry).
        with pytest.raises(CallFailed) as stream_failed:
            async with open_stream(channel, BIDI, pb.AgentReport, pb.ReportAck) as call:
                await call.write(pb.AgentReport(sequence=1))
                await call.write(pb.AgentReport(node="end-denied"))
                async for _ack in call:
                    pass
        async with open_stream(channel, BIDI, pb.AgentReport, pb.ReportAck) as call:
            await call.write(pb.AgentReport(sequence=1))
            await call.write(pb.AgentReport(node="end-ok"))
            acks = [ack.sequence async for ack in call]  # ends without an error
    finally:
        channel.close()
    assert (unary_failed.value.code, unary_failed.value.details) == (
        "PERMISSION_DENIED",
        "not this node",
    )
    assert (stream_failed.value.code, stream_failed.value.details) == (
        "PERMISSION_DENIED",
        "refused: bad node",
    )
    assert acks == [1]


async def test_leaving_the_block_cancels_the_call_on_the_server(serve: Serve) -> None:
    probe, _, port = await serve()
    channel = open_channel(f"127.0.0.1:{port}", insecure=True)
    try:
        async with open_stream(channel, BIDI, pb.AgentReport, pb.ReportAck) as call:
            await call.write(pb.AgentReport(sequence=1))
            async for _ack in call:
                break
        await asyncio.wait_for(probe.cancelled.wait(), 5)
    finally:
        channel.close()


async def test_a_deadline_ends_a_call(serve: Serve) -> None:
    _, _, port = await serve()
    channel = open_channel(f"127.0.0.1:{port}", insecure=True)
    try:
        with pytest.raises(CallFailed) as failed:
            await unary(channel, UNARY, pb.AgentReport(node="slow"), pb.ReportAck, timeout=0.3)
    finally:
        channel.close()
    assert failed.value.code == "DEADLINE_EXCEEDED"


async def test_a_server_that_goes_away_ends_the_stream_unavailable(serve: Serve) -> None:
    _, server, port = await serve()
    channel = open_channel(f"127.0.0.1:{port}", insecure=True)
    try:
        with pytest.raises(CallFailed) as failed:
            async with open_stream(channel, BIDI, pb.AgentReport, pb.ReportAck) as call:
                await call.write(pb.AgentReport(sequence=1))
                async for _ack in call:
                    await server.stop(None)  # the control plane restarts
        # The next call connects again (to nobody now) and fails the same way, at once.
        with pytest.raises(CallFailed) as again:
            await unary(channel, UNARY, pb.AgentReport(), pb.ReportAck, timeout=5)
    finally:
        channel.close()
    assert failed.value.code == "UNAVAILABLE"
    assert again.value.code == "UNAVAILABLE"


async def test_messages_over_the_receive_limit_are_refused(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(channel_module, "MAX_RECEIVE_BYTES", 10_000)
    _, _, port = await serve()
    channel = open_channel(f"127.0.0.1:{port}", insecure=True)
    try:
        for size, outcome in ((9_000, "OK"), (20_000, "RESOURCE_EXHAUSTED")):
            try:
                async with open_stream(
                    channel, BIG, pb.AgentReport, pb.ReportAck, cardinality=UNARY_STREAM
                ) as call:
                    await call.write(pb.AgentReport(sequence=size))
                    got = [len(ack.reason) async for ack in call]
                    assert got == [size]
                    code = "OK"
            except CallFailed as exc:
                code = exc.code
            assert code == outcome, size
    finally:
        channel.close()


def _ca_file(tmp_path: Path, anchor: CaMaterial) -> Path:
    path = tmp_path / "ca.crt"
    path.write_bytes(anchor.certificate_pem())
    return path


async def test_tls_to_a_server_the_anchor_vouches_for_under_the_name_dialled(
    serve: Serve, authority: CertificateAuthority, anchor: CaMaterial, tmp_path: Path
) -> None:
    probe, _, port = await serve(ServingCertificate(authority).credentials())  # 127.0.0.1
    channel = open_channel(
        f"127.0.0.1:{port}", insecure=False, ca_file=_ca_file(tmp_path, anchor), token=lambda: "t"
    )
    try:
        ack = await unary(channel, UNARY, pb.AgentReport(sequence=3), pb.ReportAck, timeout=5)
    finally:
        channel.close()
    assert ack.sequence == 3 and probe.tokens == ["Bearer t"]


async def test_tls_refuses_another_anchors_server(
    serve: Serve, foreign_authority: CertificateAuthority, anchor: CaMaterial, tmp_path: Path
) -> None:
    _, _, port = await serve(ServingCertificate(foreign_authority).credentials())
    channel = open_channel(f"127.0.0.1:{port}", insecure=False, ca_file=_ca_file(tmp_path, anchor))
    try:
        with pytest.raises(CallFailed) as failed:
            await unary(channel, UNARY, pb.AgentReport(), pb.ReportAck, timeout=5)
    finally:
        channel.close()
    assert (
        failed.value.code == "UNAVAILABLE" and "CERTIFICATE_VERIFY_FAILED" in failed.value.details
    )


async def test_tls_checks_the_servers_name(
    serve: Serve, authority: CertificateAuthority, anchor: CaMaterial, tmp_path: Path
) -> None:
    serving = ServingCertificate(authority, dns_names=["cp.example"], ips=[])
    _, _, port = await serve(serving.credentials())
    ca = _ca_file(tmp_path, anchor)
    wrong = open_channel(f"127.0.0.1:{port}", insecure=False, ca_file=ca)
    named = open_channel(f"127.0.0.1:{port}", insecure=False, ca_file=ca, server_name="cp.example")
    try:
        with pytest.raises(CallFailed) as failed:
            await unary(wrong, UNARY, pb.AgentReport(), pb.ReportAck, timeout=5)
        ack = await unary(named, UNARY, pb.AgentReport(sequence=5), pb.ReportAck, timeout=5)
    finally:
        wrong.close()
        named.close()
    assert (
        failed.value.code == "UNAVAILABLE" and "CERTIFICATE_VERIFY_FAILED" in failed.value.details
    )
    assert ack.sequence == 5


@pytest.mark.parametrize(
    ("target", "parsed"),
    [
        ("nodemesh-controlplane.nodemesh.svc.cluster.local:8086",
         ("nodemesh-controlplane.nodemesh.svc.cluster.local", 8086, None)),
        ("127.0.0.1:8086", ("127.0.0.1", 8086, None)),
        ("[::1]:8086", ("::1", 8086, None)),
        ("dns:///cp.example:9000", ("cp.example", 9000, None)),
        ("cp.example", ("cp.example", 443, None)),
        ("unix:/run/cp.sock", (None, None, "/run/cp.sock")),
        ("unix:///run/cp.sock", (None, None, "/run/cp.sock")),
        ("unix:relative.sock", (None, None, "relative.sock")),
    ],
)  # fmt: skip
def test_targets_as_grpc_writes_them(target: str, parsed: tuple[Any, ...]) -> None:
    assert parse_target(target) == parsed


class SilentProxy:
    """A TCP relay to the server that can go silent (relays nothing more, closes nothing), as
    a control plane's node that dropped off the network looks from the agent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.silent = False
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [down_w, up_w]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                if not self.silent:
                    w.write(data)

        await asyncio.gather(pipe(down_r, up_w), pipe(up_r, down_w), return_exceptions=True)

    async def stop(self) -> None:
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()


async def test_a_control_plane_gone_silent_is_noticed_by_keepalive_and_left(
    serve: Serve,
    authority: CertificateAuthority,
    anchor: CaMaterial,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(channel_module, "KEEPALIVE_SECONDS", 0.3)
    monkeypatch.setattr(channel_module, "KEEPALIVE_TIMEOUT_SECONDS", 0.3)
    _, _, port = await serve(ServingCertificate(authority).credentials())
    proxy = SilentProxy(port)
    channel = open_channel(
        f"127.0.0.1:{await proxy.start()}", insecure=False, ca_file=_ca_file(tmp_path, anchor)
    )
    loop = asyncio.get_running_loop()
    try:
        with pytest.raises(CallFailed) as failed:
            async with open_stream(channel, BIDI, pb.AgentReport, pb.ReportAck) as call:
                await call.write(pb.AgentReport(sequence=1))
                async for _ack in call:
                    proxy.silent = True
                    went_silent = loop.time()
        noticed = loop.time() - went_silent
        # The network is back: the next call is made on a new connection, and succeeds.
        proxy.silent = False
        ack = await unary(channel, UNARY, pb.AgentReport(sequence=9), pb.ReportAck, timeout=5)
    finally:
        channel.close()
        await proxy.stop()
    assert failed.value.code == "UNAVAILABLE"
    assert noticed < 3.0  # pings every 0.3 s, 0.3 s for an answer (not TLS's 30 s close)
    assert ack.sequence == 9
