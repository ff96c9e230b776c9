"""Who may use the public API: bearer tokens checked with TokenReview and every query with a
SubjectAccessReview on the (fake) API server, over real gRPC on loopback; hostile tap values;
the cap on concurrent tap streams and the shared tap budget."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator

import cp_objects as k
import grpc
import pytest
from bearer import bearer
from fake_apiserver import FakeApiServer, Grant
from kubernetes import client

from controlplane.access import Gate, KubeAccessReview, LabAccessReview
from controlplane.destination import DestinationHub
from controlplane.index import ClusterIndex
from controlplane.public_api import PublicService
from controlplane.sources.events import EventType, ObjectChanged
from controlplane.tap import MAX_STREAMS, MAX_STREAMS_PER_CALLER, TAP_BUDGET_RPS, TapBroker
from controlplane.telemetry_port import NoTelemetry
from nodemesh.access import TAP_ROLE
from nodemesh.api import public_pb2 as ppb
from nodemesh.api import public_pb2_grpc as ppb_grpc
from nodemesh.api import tap_pb2
from nodemesh.lab.access import (
    ACCESS_FILE,
    ADMIN_TOKEN_FILE,
    create_lab_access,
    service_account_token_path,
)

Code = grpc.StatusCode
WEB = ppb.Resource(kind="deploy", namespace="emojivoto", name="web")


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    server.add_user("alice-token", "alice")  # authenticated, granted nothing
    server.add_user("bob-token", "bob", ("emojivoto-devs",))
    server.add_user("admin-token", "admin", ("mesh-admins",))
    for i in range(MAX_STREAMS // MAX_STREAMS_PER_CALLER):
        server.add_user(f"ops{i}-token", f"ops{i}", ("mesh-admins",))
    server.grants += [
        Grant("emojivoto-devs", "watch", "tap.nodemesh.io", "deployments/tap", "emojivoto"),
        Grant("emojivoto-devs", "list", "stats.nodemesh.io", "deployments", "emojivoto"),
        Grant("mesh-admins", "watch", "tap.nodemesh.io", "*"),
        Grant("mesh-admins", "list", "stats.nodemesh.io", "*"),
    ]
    yield server
    server.stop()


@pytest.fixture
async def public(apiserver: FakeApiServer, grpc_server) -> AsyncIterator[tuple]:
    index = ClusterIndex()
    for obj in k.web_app(replicas=2):
        index.apply(ObjectChanged(EventType.ADDED, obj["kind"], obj))
    cfg = client.Configuration()
    cfg.host = apiserver.host
    with client.ApiClient(cfg) as api:
        broker = TapBroker(index)
        service = PublicService(
            index=index,
            telemetry=NoTelemetry(),
            broker=broker,
            hub=DestinationHub(index),
            source_name="kubernetes",
            gate=Gate(KubeAccessReview(api)),
        )
        address = await grpc_server(lambda s: ppb_grpc.add_PublicServicer_to_server(service, s))
        opened: list[grpc.aio.Channel] = []

        def stub(token: str | None) -> ppb_grpc.PublicStub:
            interceptors = bearer(token) if token else None
            opened.append(grpc.aio.insecure_channel(address, interceptors=interceptors))
            return ppb_grpc.PublicStub(opened[-1])

        yield stub, broker
        for channel in opened:
            await channel.close()


async def unary_code(call) -> Code:  # type: ignore[no-untyped-def]
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return Code.OK


async def tap_open(stub: ppb_grpc.PublicStub, request: ppb.TapRequest) -> tuple[Code, str, object]:
    """Open a tap; OK once the server has accepted it (it is then left open)."""
    call = stub.Tap(request)
    metadata = await asyncio.wait_for(call.initial_metadata(), 10)
    if "nodemesh-tap-id" in dict(metadata or ()):
        return Code.OK, "", call
    return await asyncio.wait_for(call.code(), 10), await call.details(), call


async def test_no_credentials_or_an_unknown_token_is_unauthenticated(public) -> None:
    stub, broker = public
    for who in (None, "forged-token"):
        s = stub(who)
        stat = ppb.StatRequest(resource=ppb.Resource(kind="deploy", namespace="emojivoto"))
        assert await unary_code(s.Stat(stat)) is Code.UNAUTHENTICATED
        assert await unary_code(s.ListWorkloads(ppb.ListWorkloadsRequest())) is Code.UNAUTHENTICATED
        assert await unary_code(s.ListNodes(ppb.ListNodesRequest())) is Code.UNAUTHENTICATED
        assert await unary_code(s.Edges(ppb.EdgesRequest(namespace="emojivoto"))) is (
            Code.UNAUTHENTICATED
        )
        assert await unary_code(s.Version(ppb.VersionRequest())) is Code.UNAUTHENTICATED
        code, details, _ = await tap_open(s, ppb.TapRequest(resource=WEB))
        assert code is Code.UNAUTHENTICATED, details
    assert broker.streams == {}


async def test_a_token_without_the_permission_is_denied(public, apiserver) -> None:
    stub, broker = public
    alice = stub("alice-token")
    code, details, _ = await tap_open(alice, ppb.TapRequest(resource=WEB))
    assert code is Code.PERMISSION_DENIED
    assert "'alice' may not watch deployments/tap.tap.nodemesh.io 'web'" in details
    stat = ppb.StatRequest(resource=ppb.Resource(kind="deploy", namespace="emojivoto"))
    assert await unary_code(alice.Stat(stat)) is Code.PERMISSION_DENIED
    assert broker.streams == {}
    # The review asked is Linkerd-tap shaped: verb watch on deployments/tap of the target.
    sar = [spec for kind, spec in apiserver.reviews if kind == "SubjectAccessReview"][0]
    assert sar["user"] == "alice" and "system:authenticated" in sar["groups"]
    assert sar["resourceAttributes"] == {
        "verb": "watch", "group": "tap.nodemesh.io", "resource": "deployments",
        "subresource": "tap", "namespace": "emojivoto", "name": "web"}  # fmt: skip


async def test_a_namespaced_grant_covers_its_namespace_only(public) -> None:
    stub, broker = public
    bob = stub("bob-token")
    code, _, call = await tap_open(bob, ppb.TapRequest(resource=WEB))
    assert code is Code.OK and len(broker.streams) == 1
    call.cancel()  # type: ignore[attr-defined]
    stat = ppb.StatRequest(resource=ppb.Resource(kind="deploy", namespace="emojivoto"))
    assert await unary_code(bob.Stat(stat)) is Code.OK
    other = ppb.Resource(kind="deploy", namespace="kube-system", name="coredns")
    code, _, _ = await tap_open(bob, ppb.TapRequest(resource=other))
    assert code is Code.PERMISSION_DENIED
    # --to another namespace needs the tap permission there too.
    code, _, _ = await tap_open(bob, ppb.TapRequest(resource=WEB, to_resource=other))
    assert code is Code.PERMISSION_DENIED
    everywhere = ppb.StatRequest(resource=ppb.Resource(kind="deploy"), all_namespaces=True)
    assert await unary_code(bob.Stat(everywhere)) is Code.PERMISSION_DENIED
    assert await unary_code(bob.ListNodes(ppb.ListNodesRequest())) is Code.PERMISSION_DENIED


async def test_with_the_permission_everything_answers(public) -> None:
    stub, _ = public
    admin = stub("admin-token")
    stat = await admin.Stat(
        ppb.StatRequest(resource=ppb.Resource(kind="deploy"), all_namespaces=True)
    )
    assert [r.resource.name for r in stat.rows] == ["web"]
    assert (await admin.ListWorkloads(ppb.ListWorkloadsRequest())).workloads
    assert await unary_code(admin.ListNodes(ppb.ListNodesRequest())) is Code.OK
    assert await unary_code(admin.Edges(ppb.EdgesRequest(all_namespaces=True))) is Code.OK
    assert (await admin.Version(ppb.VersionRequest())).source == "kubernetes"
    code, _, call = await tap_open(
        admin, ppb.TapRequest(resource=ppb.Resource(kind="ns", name="emojivoto"))
    )
    assert code is Code.OK
    call.cancel()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("max_rps", "message"),
    [
        (math.nan, "max_rps must be a finite number, not nan"),
        (math.inf, "max_rps must be a finite number, not inf"),
        (-math.inf, "max_rps must be a finite number, not -inf"),
        (-1.0, "max_rps -1 is outside (0, 1000]"),
        (1e9, "max_rps 1e+09 is outside (0, 1000]"),
    ],
)
async def test_hostile_tap_values_are_invalid_argument(public, max_rps, message) -> None:
    stub, broker = public
    code, details, _ = await tap_open(
        stub("admin-token"), ppb.TapRequest(resource=WEB, max_rps=max_rps)
    )
    assert code is Code.INVALID_ARGUMENT
    assert message in details
    assert broker.streams == {}


async def test_one_caller_gets_a_few_tap_streams_not_all(public) -> None:
    stub, broker = public
    admin, ops = stub("admin-token"), stub("ops0-token")
    calls = []
    for _ in range(MAX_STREAMS_PER_CALLER):
        code, details, call = await tap_open(admin, ppb.TapRequest(resource=WEB))
        assert code is Code.OK, details
        calls.append(call)
    code, details, _ = await tap_open(admin, ppb.TapRequest(resource=WEB))
    assert code is Code.RESOURCE_EXHAUSTED, details
    assert details == (
        f"admin has {MAX_STREAMS_PER_CALLER} tap streams open, the most one caller may have at "
        f"once ({MAX_STREAMS_PER_CALLER}, nodemesh-controlplane --tap-streams-per-caller); "
        "end one of them and try again"
    )
    # Another caller still gets its streams.
    code, details, call = await tap_open(ops, ppb.TapRequest(resource=WEB))
    assert code is Code.OK, details
    calls.append(call)
    # The caller's own count goes down when one of its streams ends.
    calls.pop(0).cancel()
    deadline = time.monotonic() + 5
    while sum(s.caller == "admin" for s in broker.streams.values()) >= MAX_STREAMS_PER_CALLER:
        assert time.monotonic() < deadline, "an ended tap still counts against its caller"
        await asyncio.sleep(0.02)
    code, details, call = await tap_open(admin, ppb.TapRequest(resource=WEB))
    assert code is Code.OK, details
    calls.append(call)
    for c in calls:
        c.cancel()


async def test_tap_streams_are_capped_and_share_one_budget(public) -> None:
    stub, broker = public
    callers = [stub(f"ops{i}-token") for i in range(MAX_STREAMS // MAX_STREAMS_PER_CALLER)]
    calls = []
    for i in range(MAX_STREAMS):
        code, details, call = await tap_open(
            callers[i % len(callers)], ppb.TapRequest(resource=WEB, max_rps=1000)
        )
        assert code is Code.OK, details
        calls.append(call)
    admin = stub("admin-token")
    code, details, _ = await tap_open(admin, ppb.TapRequest(resource=WEB))
    assert code is Code.RESOURCE_EXHAUSTED
    assert f"the most the control plane allows at once ({MAX_STREAMS})" in details
    # However much each asked for, together they get the budget, evenly.
    rates = [s.request.max_rps for s in broker.streams.values()]
    assert sum(rates) == pytest.approx(TAP_BUDGET_RPS)
    assert max(rates) == pytest.approx(TAP_BUDGET_RPS / MAX_STREAMS)
    calls.pop().cancel()
    deadline = time.monotonic() + 5
    while len(broker.streams) >= MAX_STREAMS and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    code, _, call = await tap_open(admin, ppb.TapRequest(resource=WEB, max_rps=10))
    assert code is Code.OK
    calls.append(call)
    # The small stream gets all it asked; the others share what is left.
    assert sorted(s.request.max_rps for s in broker.streams.values())[0] == pytest.approx(10)
    assert sum(s.request.max_rps for s in broker.streams.values()) == pytest.approx(TAP_BUDGET_RPS)
    for c in calls:
        c.cancel()


async def test_a_revoked_token_is_refused_within_seconds_also_mid_tap(public, apiserver) -> None:
    stub, broker = public
    admin = stub("admin-token")
    code, _, tap = await tap_open(admin, ppb.TapRequest(resource=WEB))
    assert code is Code.OK
    stat = ppb.StatRequest(resource=ppb.Resource(kind="deploy"), all_namespaces=True)
    assert await unary_code(admin.Stat(stat)) is Code.OK
    apiserver.revoke("admin-token")
    revoked_at = time.monotonic()
    while await unary_code(admin.Stat(stat)) is Code.OK:
        assert time.monotonic() - revoked_at < 15, "a revoked token still works"
        await asyncio.sleep(0.2)
    assert await unary_code(admin.Stat(stat)) is Code.UNAUTHENTICATED
    # The open tap is ended too, at its next re-check.
    assert await asyncio.wait_for(tap.code(), 15) is Code.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert broker.streams == {}


async def lab_public(tmp_path, grpc_server) -> tuple[str, TapBroker]:  # type: ignore[no-untyped-def]
    """A public API checking callers against a fresh lab grant table in `tmp_path`."""
    create_lab_access(tmp_path)
    index = ClusterIndex()
    for obj in k.web_app(replicas=1):
        index.apply(ObjectChanged(EventType.ADDED, obj["kind"], obj))
    broker = TapBroker(index)
    service = PublicService(
        index=index,
        telemetry=NoTelemetry(),
        broker=broker,
        hub=DestinationHub(index),
        source_name="local",
        gate=Gate(LabAccessReview(tmp_path / ACCESS_FILE)),
    )
    address = await grpc_server(lambda s: ppb_grpc.add_PublicServicer_to_server(service, s))
    return address, broker


async def test_the_lab_backend_admits_its_admin_and_dashboard_and_nobody_else(
    tmp_path, grpc_server
) -> None:
    address, _ = await lab_public(tmp_path, grpc_server)
    admin = (tmp_path / ADMIN_TOKEN_FILE).read_text().strip()
    dashboard = service_account_token_path(tmp_path, "nodemesh", "nodemesh-dashboard").read_text()
    assert (tmp_path / ACCESS_FILE).stat().st_mode & 0o077 == 0
    assert (tmp_path / ADMIN_TOKEN_FILE).stat().st_mode & 0o077 == 0
    for token, expected in ((admin, Code.OK), (dashboard.strip(), Code.OK), (None, Code.UNAUTHENTICATED),
                            ("guess", Code.UNAUTHENTICATED)):  # fmt: skip
        async with grpc.aio.insecure_channel(
            address, interceptors=bearer(token) if token else None
        ) as channel:
            s = ppb_grpc.PublicStub(channel)
            code, _, call = await tap_open(s, ppb.TapRequest(resource=WEB))
            assert code is expected, token
            if code is Code.OK:
                call.cancel()  # type: ignore[attr-defined]
            stat = ppb.StatRequest(resource=ppb.Resource(kind="deploy"), all_namespaces=True)
            assert await unary_code(s.Stat(stat)) is expected


@pytest.mark.parametrize("value", ["0", "-1", str(MAX_STREAMS + 1)])
def test_a_per_caller_limit_outside_1_to_the_total_is_refused(value, capsys) -> None:
    from controlplane.main import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--tap-streams-per-caller", value])
    assert f"--tap-streams-per-caller {value}: must be from 1 to {MAX_STREAMS}" in (
        capsys.readouterr().err
    )
    assert parse_args(["--tap-streams-per-caller", "2"]).tap_streams_per_caller == 2


async def test_a_removed_grant_ends_an_open_tap(public, apiserver) -> None:
    stub, broker = public
    code, details, tap = await tap_open(stub("bob-token"), ppb.TapRequest(resource=WEB))
    assert code is Code.OK, details
    apiserver.grants = [g for g in apiserver.grants if g.verb != "watch"]
    assert await asyncio.wait_for(tap.code(), 15) is Code.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert "bob" in await tap.details()  # type: ignore[attr-defined]
    assert broker.streams == {}


async def test_a_revoked_caller_that_stops_reading_loses_its_tap(public, apiserver) -> None:
    """A caller that does not read (so the server's writes wait on flow control) cannot keep
    the agents tapping for it after its token is revoked: the stream leaves the broker within
    seconds, and the caller reads UNAUTHENTICATED when it reads again."""
    stub, broker = public
    code, details, tap = await tap_open(stub("admin-token"), ppb.TapRequest(resource=WEB))
    assert code is Code.OK, details
    (stream,) = broker.streams.values()
    big = tap_pb2.TapEvent(
        subscription_id=stream.id, req=tap_pb2.RequestInit(path="/" + "x" * 16_000)
    )

    async def flood() -> None:
        while True:
            while not stream.queue.full():
                stream.queue.put_nowait(big)
            await asyncio.sleep(0.05)

    feeder = asyncio.ensure_future(flood())
    try:
        await asyncio.sleep(2)  # the transport's windows fill: the server's writes now wait
        apiserver.revoke("admin-token")
        revoked_at = time.monotonic()
        while broker.streams:
            assert time.monotonic() - revoked_at < 20, "the revoked caller's tap still runs"
            await asyncio.sleep(0.2)
    finally:
        feeder.cancel()
    read = 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in tap:  # type: ignore[attr-defined]
            read += 1
            assert read < 10_000, "events still flow to a revoked caller"
    assert err.value.code() is Code.UNAUTHENTICATED


async def test_editing_the_lab_grant_table_ends_an_open_tap(tmp_path, grpc_server) -> None:
    """The lab's backend: a binding taken out of access.json ends the admin's open tap."""
    address, broker = await lab_public(tmp_path, grpc_server)
    admin = (tmp_path / ADMIN_TOKEN_FILE).read_text().strip()
    async with grpc.aio.insecure_channel(address, interceptors=bearer(admin)) as channel:
        code, details, tap = await tap_open(
            ppb_grpc.PublicStub(channel), ppb.TapRequest(resource=WEB)
        )
        assert code is Code.OK, details
        table = json.loads((tmp_path / ACCESS_FILE).read_text())
        table["bindings"] = [b for b in table["bindings"] if b["role"] != TAP_ROLE]
        (tmp_path / ACCESS_FILE).write_text(json.dumps(table))
        assert await asyncio.wait_for(tap.code(), 15) is Code.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert broker.streams == {}
