"""Public API (CLI and dashboard): stat, edges, tap, workloads, nodes, version."""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc

from controlplane import resources, routes_api, stat_answer
from controlplane.access import REVIEW_CACHE_SECONDS, AccessRefused, Gate, refuse
from controlplane.destination import DestinationHub, SharedEncoding
from controlplane.index import ClusterIndex
from controlplane.peers import Peer, caller_credentials, is_local_only, peer_tap
from controlplane.prometheus_telemetry import PrometheusTelemetry, PrometheusUnavailable
from controlplane.stat_cache import StatCache
from controlplane.tap import TapBroker, TapBusy, TapStream
from controlplane.telemetry_port import (
    LIVE_AGENT_SECONDS,
    BadQuery,
    Selector,
    TelemetryPort,
)
from controlplane.telemetry_worker import WorkerTelemetry
from nodemesh import tasks
from nodemesh.access import ResourceAttributes, stats_attributes, tap_attributes
from nodemesh.api import public_pb2 as pb
from nodemesh.api import public_pb2_grpc as pb_grpc
from nodemesh.api import tap_pb2
from nodemesh.model import PodInfo
from nodemesh.version import __version__

T = TypeVar("T")
STATS_SOURCE = "nodemesh-stats-source"  # gRPC metadata key: "embedded" skips Prometheus
DEFAULT_WINDOW = stat_answer.DEFAULT_WINDOW
MIN_WINDOW, MAX_WINDOW = 10, 900
DEFAULT_TAP_RPS, MAX_TAP_RPS = 100.0, 1000.0
# A tap stream re-checks its caller this often (as often as a review answer may be reused),
# so a revoked token or binding ends it within two of these.
TAP_RECHECK_SECONDS = REVIEW_CACHE_SECONDS
# The Stats built ahead after a start (PublicService.build_ahead), every namespace, the default
# window: what `nodemesh stat pod -A` and `stat deploy -A` ask, and the scale bench's first
# calls. (The dashboard samples deployments over 10 s every few seconds: kept while it runs.)
BUILT_AHEAD = ("pod", "deployment")
# A Stat's rows are built holding the loop for at most about this long at a time.
STAT_TURN_SECONDS = 0.05


def window_of(seconds: int) -> int:
    if seconds == 0:
        return DEFAULT_WINDOW
    if not MIN_WINDOW <= seconds <= MAX_WINDOW:
        raise resources.BadResource(
            f"window of {seconds}s is outside {MIN_WINDOW}-{MAX_WINDOW} seconds (the store "
            "keeps 15 minutes in 10 s buckets)"
        )
    return seconds


def tap_rate(asked: float) -> float:
    """The stream's max_rps (0 = the default), or BadResource naming what is wrong with it."""
    if not math.isfinite(asked):
        raise resources.BadResource(f"max_rps must be a finite number, not {asked}")
    if asked == 0:
        return DEFAULT_TAP_RPS
    if not 0 < asked <= MAX_TAP_RPS:
        raise resources.BadResource(
            f"max_rps {asked:g} is outside (0, {MAX_TAP_RPS:g}] requests per second"
        )
    return asked


def _plural(kind: str) -> str:
    return resources.canonical_kind(kind) + "s"


def _tap_check(res: pb.Resource) -> ResourceAttributes:
    return tap_attributes(_plural(res.kind), namespace=res.namespace or "default", name=res.name)


async def _answer(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


Telemetry = TelemetryPort | PrometheusTelemetry | WorkerTelemetry


class Enrolled(stat_answer.Enrolled):
    def pod(self, p: PodInfo) -> bool:
        return self((p.key.namespace, p.key.name, p.uid))


def _running(pods: Iterable[PodInfo]) -> list[PodInfo]:
    """The pods that count: neither being deleted nor finished."""
    return [p for p in pods if not p.terminating and p.phase not in ("Succeeded", "Failed")]


def _stat_key(
    telemetry: Telemetry,
    kind: str,
    namespace: str,
    name: str,
    source: Selector | None,
    destination: Selector | None,
    window: int,
) -> tuple[object, ...]:
    """A kept Stat answer's key. The answer does not depend on who asks (the gate has let the
    caller in)."""
    return (id(telemetry), kind, namespace, name, source, destination, window)


def _selector(res: pb.Resource) -> Selector | None:
    if not res.kind:
        return None
    return Selector(resources.canonical_kind(res.kind), res.namespace, res.name)


class PublicService(pb_grpc.PublicServicer):
    def __init__(
        self,
        *,
        index: ClusterIndex,
        telemetry: Telemetry,
        broker: TapBroker,
        hub: DestinationHub,
        source_name: str,
        gate: Gate,
        peers: Callable[[], Iterable[Peer]] = tuple,
        peer_port: int = 8085,
        stat_cache: StatCache[pb.StatResponse | bytes] | None = None,
    ) -> None:
        # Stat answers kept and refreshed while asked (controlplane.stat_cache: at most 2 s
        # old); None: each call builds its answer.
        self.stat_cache = stat_cache
        self._groups_held: dict[tuple[str, str], tuple[int, stat_answer.Groups]] = {}
        # Set by add_to_server, whose Stat serializer sends an encoded answer as it is.
        self.sends_encoded_stat = False
        # Other replicas of the control plane (controlplane.peers): a tap reaches their agents.
        self.peers = peers
        self.peer_port = peer_port
        self.gate = gate
        self.index = index
        self.telemetry = telemetry
        self.broker = broker
        self.hub = hub
        self.source_name = source_name

    async def Stat(  # noqa: N802
        self, request: pb.StatRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatResponse | bytes:
        """The answer, or it encoded (by the telemetry worker: `_Registering` sends it as is)."""
        try:
            kind = resources.canonical_kind(request.resource.kind)
            window = window_of(request.window_seconds)
            source = _selector(request.from_resource)
            destination = _selector(request.to_resource)
        except resources.BadResource as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        cluster_scoped = kind in ("namespace", "node")
        namespace = (
            ""
            if request.all_namespaces or cluster_scoped
            else (request.resource.namespace or "default")
        )
        await self.gate.admit(context, stats_attributes(kind + "s", namespace=namespace))
        telemetry = self._telemetry(context)
        name = request.resource.name

        def build() -> Awaitable[pb.StatResponse | bytes]:
            return self._stat(telemetry, kind, namespace, name, source, destination, window)

        try:
            if self.stat_cache is None:
                return await build()
            key = _stat_key(telemetry, kind, namespace, name, source, destination, window)
            return await self.stat_cache.get(key, build)
        except BadQuery as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except PrometheusUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise AssertionError("context.abort raises")

    def build_ahead(self, seconds: float) -> None:
        """Keep the answers to the questions asked first (BUILT_AHEAD) for `seconds` as if
        asked, so that their first call finds one (controlplane.stat_cache.warm). Only over the
        embedded store: Prometheus would be queried for answers nobody may ask."""
        telemetry = self.telemetry
        if self.stat_cache is None or not isinstance(telemetry, WorkerTelemetry) or seconds <= 0:
            return
        for kind in BUILT_AHEAD:

            def build(kind: str = kind) -> Awaitable[pb.StatResponse | bytes]:
                return self._stat(telemetry, kind, "", "", None, None, DEFAULT_WINDOW)

            key = _stat_key(telemetry, kind, "", "", None, None, DEFAULT_WINDOW)
            self.stat_cache.warm(key, build, seconds)

    async def _stat(
        self,
        telemetry: Telemetry,
        kind: str,
        namespace: str,
        name: str,
        source: Selector | None,
        destination: Selector | None,
        window: int,
    ) -> pb.StatResponse | bytes:
        """The answer (controlplane.stat_answer): encoded by the telemetry worker when the
        store is there, else built here, on the loop, giving it back every STAT_TURN_SECONDS."""
        groups = self._groups_of(kind, namespace)
        if isinstance(telemetry, WorkerTelemetry):
            raw = await telemetry.stat_answer(
                group_by=kind, namespace=namespace, name=name, source=source,
                destination=destination, window_s=window, groups=groups,
            )  # fmt: skip
            # Sent as is where registered by add_to_server; decoded (by protobuf's C code, a
            # few milliseconds for 10,000 rows) for a server that encodes answers itself.
            return raw if self.sends_encoded_stat else pb.StatResponse.FromString(raw)
        # Both questions at once: a store answers them one after the other.
        enrolled = asyncio.ensure_future(_answer(telemetry.enrolled_pods()))
        try:
            found = await _answer(
                telemetry.stat(
                    group_by=kind,
                    namespace=namespace,
                    source=source,
                    destination=destination,
                    window_s=window,
                )
            )  # the Prometheus port asks over HTTP
        except BaseException:
            enrolled.cancel()
            raise
        answer = pb.StatResponse(window_seconds=window)
        turn = time.monotonic()
        for _ in stat_answer.rows_into(
            answer, kind=kind, namespace=namespace, name=name, window=window, groups=groups,
            traffic=stat_answer.plain_of(found, window), enrolled=await enrolled,
        ):  # fmt: skip
            if time.monotonic() - turn > STAT_TURN_SECONDS:
                # Let the agents' streams run. By time, not every 1,000 rows: on a loaded loop
                # each turn given back waits behind every stream ready then (a kept answer,
                # no build at all, took up to 5.9 s at 500 agents), and a cold Stat of 10,000
                # rows gave back ten.
                await asyncio.sleep(0)
                turn = time.monotonic()
        return answer

    def _groups_of(self, kind: str, namespace: str) -> stat_answer.Groups:
        """The index's side of a Stat (controlplane.stat_answer.groups_of), kept while no
        object changed in the index (a pass over 10,000 pods, once per build otherwise)."""
        key = (kind, namespace)
        held = self._groups_held.get(key)
        if held is not None and held[0] == self.index.applied:
            return held[1]
        groups = stat_answer.groups_of(self.index, kind, namespace)
        if len(self._groups_held) >= 16:
            self._groups_held.pop(next(iter(self._groups_held)))
        self._groups_held[key] = (self.index.applied, groups)
        return groups

    def _telemetry(self, context: grpc.aio.ServicerContext) -> Telemetry:
        """With --prometheus-url, a caller may ask the embedded store instead (metadata
        nodemesh-stats-source: embedded), to compare the two side by side."""
        t = self.telemetry
        if isinstance(t, PrometheusTelemetry) and any(
            key == STATS_SOURCE and value == "embedded"
            for key, value in context.invocation_metadata() or ()
        ):
            return t.reports
        return t

    async def Edges(  # noqa: N802
        self, request: pb.EdgesRequest, context: grpc.aio.ServicerContext
    ) -> pb.EdgesResponse:
        try:
            kind = resources.canonical_kind(request.kind or "deploy")
            if kind not in ("deployment", "pod"):
                raise resources.BadResource(f"edges are shown for deploy or pod, not {kind}")
            window = window_of(request.window_seconds)
        except resources.BadResource as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        namespace = "" if request.all_namespaces else (request.namespace or "default")
        await self.gate.admit(
            context,
            stats_attributes("edges", namespace=namespace),
            stats_attributes(kind + "s", namespace=namespace),
        )
        try:
            edges = await _answer(
                self._telemetry(context).edges(kind=kind, namespace=namespace, window_s=window)
            )
        except BadQuery as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except PrometheusUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return pb.EdgesResponse(
            edges=[
                pb.Edge(
                    src=pb.Resource(kind=e.src.kind, namespace=e.src.namespace, name=e.src.name),
                    dst=pb.Resource(kind=e.dst.kind, namespace=e.dst.namespace, name=e.dst.name),
                    src_identity=e.src_identity,
                    dst_identity=e.dst_identity,
                    tls=e.tls,
                    requests=e.requests,
                    tcp_connections=e.tcp_connections,
                )
                for e in edges
            ]
        )

    async def Tap(  # noqa: N802
        self, request: pb.TapRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tap_pb2.TapEvent]:
        try:
            checks = [_tap_check(request.resource)]
            if request.to_resource.kind:
                checks.append(_tap_check(request.to_resource))
            rate = tap_rate(request.max_rps)
        except resources.BadResource as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        who = await self.gate.admit(context, *checks)
        sub = tap_pb2.TapSubscription(
            resource=_tap_ref(request.resource),
            method=request.method,
            path_prefix=request.path_prefix,
            max_rps=rate,
        )
        if request.to_resource.kind:
            sub.to.CopyFrom(_tap_ref(request.to_resource))
        try:
            stream = self.broker.subscribe(sub, caller=who.username)
        except resources.BadResource as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except TapBusy as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        watch: asyncio.Task[None] | None = None
        fanout = None
        if not is_local_only(context):
            fanout = tasks.spawn(
                peer_tap(
                    self.peers, self.peer_port, request, caller_credentials(context), stream.queue
                ),
                name=f"tap {stream.id} via peers",
            )
        try:
            # Says the tap has started (and at what rate, after sharing the budget) before any
            # event: the caller need not wait for traffic to know it was accepted.
            await context.send_initial_metadata(
                (
                    ("nodemesh-tap-id", stream.id),
                    ("nodemesh-tap-max-rps", f"{stream.request.max_rps:g}"),
                )
            )
            # Re-checked beside the stream, not between its writes: a caller that stops
            # reading (its writes wait on flow control) is still cut off when revoked.
            refused: asyncio.Future[AccessRefused] = asyncio.get_running_loop().create_future()
            watch = tasks.spawn(
                self._recheck_tap(context, checks, stream, refused), name=f"{stream.id} recheck"
            )
            while True:
                event = asyncio.ensure_future(stream.queue.get())
                either: set[asyncio.Future[Any]] = {event, refused}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if refused.done():
                    event.cancel()
                    await refuse(context, refused.result())
                yield event.result()
        finally:
            if watch is not None:
                await tasks.cancel_all([watch])
            if fanout is not None:
                await tasks.cancel_all([fanout])
            self.broker.unsubscribe(stream)

    async def _recheck_tap(
        self,
        context: grpc.aio.ServicerContext,
        checks: list[ResourceAttributes],
        stream: TapStream,
        refused: asyncio.Future[AccessRefused],
    ) -> None:
        """Ask again every TAP_RECHECK_SECONDS whether the caller may still tap; when not,
        stop the tap on the agents at once and have the stream end with the refusal."""
        while True:
            await asyncio.sleep(TAP_RECHECK_SECONDS)
            try:
                await self.gate.caller(context, *checks)
            except AccessRefused as exc:
                self.broker.unsubscribe(stream)
                refused.set_result(exc)
                return

    async def Routes(  # noqa: N802
        self, request: pb.RoutesRequest, context: grpc.aio.ServicerContext
    ) -> pb.RoutesResponse:
        res = request.resource
        namespace = res.namespace or "default"
        try:
            kind = resources.canonical_kind(res.kind or "deploy")
            window = window_of(request.window_seconds)
            source = _selector(request.from_resource)
            await self.gate.admit(context, stats_attributes(kind + "s", namespace=namespace))
            services = routes_api.services_of(self.index, kind, namespace, res.name)
        except resources.BadResource as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except routes_api.UnknownResource as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        attached, rules = routes_api.attached(self.index, services)
        try:
            found = await _answer(
                self._telemetry(context).routes(
                    services=[(s.namespace, s.name) for s in services],
                    source=source,
                    window_s=window,
                )
            )
        except BadQuery as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except PrometheusUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        rows = {(r.namespace, r.name, r.route): r for r in found}
        out = []
        for key in sorted(set(rows) | set(rules)):
            r = rows.get(key)
            kind_of = rules.get(key, "")
            if r is None:
                out.append(
                    pb.RouteRow(
                        service_namespace=key[0], service=key[1], route=key[2], kind=kind_of
                    )
                )
            else:
                out.append(routes_api.route_row(r, kind=kind_of, window=window))
        return pb.RoutesResponse(
            rows=out,
            attached=attached,
            services=[f"{s.namespace}/{s.name}" for s in services],
            window_seconds=window,
            route_errors=routes_api.route_errors(self.index, services),
        )

    async def ListWorkloads(  # noqa: N802
        self, request: pb.ListWorkloadsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWorkloadsResponse:
        await self.gate.admit(context, stats_attributes("workloads", namespace=request.namespace))
        out = []
        meshed = Enrolled(await _answer(self.telemetry.enrolled_pods()))
        for ref, wl in sorted(self.index.workloads.items()):
            if request.namespace and ref.namespace != request.namespace:
                continue
            pods = _running(self.index.pods_of_workload(ref))
            out.append(
                pb.WorkloadStatus(
                    kind=ref.kind,
                    namespace=ref.namespace,
                    name=ref.name,
                    identities=list(wl.identities),
                    pods=len(pods),
                    ready_pods=sum(p.ready for p in pods),
                    meshed_pods=sum(map(meshed.pod, pods)),
                    nodes=sorted({p.node for p in pods if p.node}),
                    mesh_errors=sorted({e for p in pods for e in p.mesh.errors}),
                )
            )
        return pb.ListWorkloadsResponse(workloads=out, namespaces_meshed=self.index.namespaces())

    async def ListNodes(  # noqa: N802
        self, request: pb.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNodesResponse:
        await self.gate.admit(context, stats_attributes("nodes", namespace=""))
        agents = {a.node: a for a in await _answer(self.telemetry.agents())}
        connected = {s.node: s.agent_version for s in self.hub.subscribers}
        # With replicas, an agent streams from one of them; its reports, forwarded to every
        # replica, say it is connected wherever the question is asked.
        recent = (time.time() - LIVE_AGENT_SECONDS) * 1000
        reporting = {a.node for a in agents.values() if a.last_report_unix_ms >= recent}
        names = sorted(set(self.index.nodes) | set(agents) | set(connected))
        out = []
        meshed = Enrolled(await _answer(self.telemetry.enrolled_pods()))
        for name in names:
            info = self.index.nodes.get(name)
            pods = _running(self.index.pods_on_node(name))
            agent = agents.get(name)
            out.append(
                pb.NodeStatus(
                    name=name,
                    internal_ip=info.internal_ip if info else "",
                    pod_cidr=info.pod_cidr if info else "",
                    ready=info.ready if info else False,
                    pods=len(pods),
                    meshed_pods=sum(map(meshed.pod, pods)),
                    agent_connected=name in connected or name in reporting,
                    agent_version=connected.get(name) or (agent.version if agent else ""),
                    last_report_unix_ms=agent.last_report_unix_ms if agent else 0,
                    pods_enrolled=agent.pods_enrolled if agent else 0,
                    open_connections=agent.open_connections if agent else 0,
                    cpu_seconds=agent.cpu_seconds if agent else 0.0,
                    rss_bytes=agent.rss_bytes if agent else 0,
                )
            )
        return pb.ListNodesResponse(nodes=out)

    async def Version(  # noqa: N802
        self, request: pb.VersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.VersionResponse:
        await self.gate.admit(context)  # any authenticated caller
        return pb.VersionResponse(
            version=__version__,
            source=self.source_name,
            trust_domain=self.index.trust_domain,
            synced=self.index.synced,
        )


class _Registering:
    """Takes the handlers pb_grpc.add_PublicServicer_to_server makes and registers them with
    Stat's serializer replaced."""

    def __init__(self, server: grpc.aio.Server, encoding: SharedEncoding) -> None:
        self.server = server
        self.encoding = encoding

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass  # registered below, from the same table

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        handlers = dict(handlers)
        stat = handlers["Stat"]
        handlers["Stat"] = grpc.unary_unary_rpc_method_handler(
            stat.unary_unary,
            request_deserializer=stat.request_deserializer,
            response_serializer=self._encode,
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, handlers),)
        )
        self.server.add_registered_method_handlers(service, handlers)

    def _encode(self, answer: pb.StatResponse | bytes) -> bytes:
        # Encoded already by the telemetry worker (controlplane.stat_answer).
        return answer if isinstance(answer, bytes) else self.encoding(answer)


def add_to_server(service: PublicService, server: grpc.aio.Server) -> SharedEncoding:
    """Register `service` as pb_grpc.add_PublicServicer_to_server does, with Stat's answers
    encoded once per kept answer (a cached answer of 10,000 rows is ~1 MB to encode)."""
    encoding = SharedEncoding(size=8)
    service.sends_encoded_stat = True
    pb_grpc.add_PublicServicer_to_server(service, _Registering(server, encoding))
    return encoding


def _tap_ref(res: pb.Resource) -> tap_pb2.ResourceRef:
    return tap_pb2.ResourceRef(kind=res.kind, namespace=res.namespace or "default", name=res.name)
