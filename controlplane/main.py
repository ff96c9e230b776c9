"""nodemesh-controlplane: index, destination, identity, telemetry, tap and public API servers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc

from controlplane.access import (
    AccessReview,
    Gate,
    KubeAccessReview,
    LabAccessReview,
    NoAccessReview,
)
from controlplane.admin import AdminServer
from controlplane.agent_auth import AgentAuthInterceptor
from controlplane.destination import INDEX_POLL, DestinationHub, DestinationService
from controlplane.destination import add_to_server as add_destination
from controlplane.feed import Feed, Listener
from controlplane.gc_pauses import keep_full_collections_short
from controlplane.identity import (
    Authenticator,
    BootstrapTokenAuthenticator,
    CertificateAuthority,
    TokenReviewAuthenticator,
    load_ca_from_directory,
    load_ca_from_secret,
)
from controlplane.identity.service import SERVICE as IDENTITY_SERVICE
from controlplane.identity.service import IdentityService
from controlplane.identity.serving import (
    ServingCertificate,
    serving_dns_names,
    serving_identity,
)
from controlplane.index import ClusterIndex
from controlplane.peers import (
    Peer,
    PeersLeft,
    ReportForwarder,
    find_peers,
    is_peer_token,
    peer_token,
)
from controlplane.prometheus_telemetry import PrometheusTelemetry
from controlplane.public_api import PublicService
from controlplane.public_api import add_to_server as add_public
from controlplane.sources.events import Source
from controlplane.sources.kube import KubeSource
from controlplane.sources.local import LocalSource
from controlplane.stat_cache import StatCache
from controlplane.tap import MAX_STREAMS, MAX_STREAMS_PER_CALLER, AgentTapService, TapBroker
from controlplane.telemetry import TelemetryStore
from controlplane.telemetry.service import MAX_RECEIVE_BYTES
from controlplane.telemetry.service import SERVICE as TELEMETRY_SERVICE
from controlplane.telemetry_worker import (
    MODES,
    TelemetryWorker,
    WorkerTelemetry,
    WorkerTelemetryService,
)
from nodemesh import ports, tasks
from nodemesh.api import public_pb2, tap_pb2_grpc
from nodemesh.kubeclient import load_api_client
from nodemesh.model import PodInfo, PodKey
from nodemesh.version import __version__

log = logging.getLogger("nodemesh.controlplane")

CA_SECRET_NAME = "nodemesh-identity"
AGENT_SERVICE_ACCOUNT = "nodemesh-agent"
# Stat pod and deployment over every namespace kept built ahead this long after start and after a
# peer replica goes: the first look after an install, an upgrade or a failover finds an answer
# (controlplane.public_api.build_ahead). Cost while it lasts: ~0.12 of a core at 10,000 pods
# (a build of each every ~1.5 s), nothing after (bench/results/controlplane-scale.md, tenth
# round).
STAT_BUILD_AHEAD_SECONDS = 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nodemesh-controlplane", description=__doc__)
    p.add_argument("--source", choices=("local", "kubernetes"), default="kubernetes")
    p.add_argument("--state-dir", help="lab state directory (local source): /run/nodemesh/<lab>")
    p.add_argument("--identity-dir", help="lab identity directory: ca.crt, issuer.*, tokens.json")
    p.add_argument(
        "--access-file",
        help="lab grant table (access.json): who may call the public API; on a cluster the API "
        "server decides (TokenReview + SubjectAccessReview)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig when not running in a cluster")
    p.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE") or "nodemesh",
        help="the namespace nodemesh is installed in (default: $POD_NAMESPACE, else nodemesh): "
        "names the serving certificate, the agents' ServiceAccount and the CA Secret",
    )
    p.add_argument(
        "--cluster-domain",
        default="cluster.local",
        help="the cluster's DNS domain, for the serving certificate's names",
    )
    p.add_argument(
        "--ca-secret", default=None, help="namespace/name (default: <namespace>/nodemesh-identity)"
    )
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--agent-addr", default=f"0.0.0.0:{ports.AGENT_API}")
    p.add_argument("--public-addr", default=f"0.0.0.0:{ports.PUBLIC_API}")
    p.add_argument("--admin-addr", default=f"0.0.0.0:{ports.CONTROLPLANE_ADMIN}")
    p.add_argument("--agent-tls", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--drain-seconds", type=float, default=5.0)
    p.add_argument(
        "--tap-streams-per-caller",
        type=int,
        default=MAX_STREAMS_PER_CALLER,
        help="how many tap streams one caller (user or ServiceAccount) may have open at once "
        f"(default {MAX_STREAMS_PER_CALLER}; the control plane allows {MAX_STREAMS} in all)",
    )
    p.add_argument(
        "--pod-name",
        default=os.environ.get("POD_NAME", ""),
        help="this replica's pod (default: $POD_NAME): the other control-plane pods of the "
        "namespace are its peers, which get its agents' telemetry and its taps",
    )
    p.add_argument(
        "--telemetry-max-series",
        type=int,
        default=TelemetryStore.max_series,
        help="series the embedded stats store holds at most; past it the least recently "
        "updated go (counted in nodemesh_telemetry_series_evicted_total)",
    )
    p.add_argument(
        "--telemetry-max-cells",
        type=int,
        default=TelemetryStore.max_cells,
        help="10 s cells (of series and of per-resource aggregates) the store holds at most, "
        "about 0.5 KB each; past it the oldest bucket goes",
    )
    p.add_argument(
        "--telemetry-worker",
        choices=MODES,
        default="process",
        help="where the embedded stats store and the agents' reports are handled: a child "
        "process (default: off the event loop that serves the agents' streams), a thread, or "
        "inline on the event loop",
    )
    p.add_argument(
        "--stat-build-ahead-seconds",
        type=float,
        default=STAT_BUILD_AHEAD_SECONDS,
        help="for this long after start (and after a peer replica goes), keep Stat pod and "
        "Stat deployment over every namespace "
        "(default window) built ahead, as if asked, so the first such call finds an answer "
        "(0: off; bench/results/controlplane-scale.md, tenth round, has the cost)",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--prometheus-url",
        help="answer Stat and Edges from this Prometheus (PromQL over the agents' /metrics) "
        "instead of the embedded store, e.g. http://prometheus.nodemesh:9090",
    )
    args = p.parse_args(argv)
    if args.source == "local" and not args.state_dir:
        p.error("--source local needs --state-dir")
    if not 1 <= args.tap_streams_per_caller <= MAX_STREAMS:
        p.error(
            f"--tap-streams-per-caller {args.tap_streams_per_caller}: must be from 1 to "
            f"{MAX_STREAMS} (the control plane's limit on all tap streams)"
        )
    for flag in ("telemetry_max_series", "telemetry_max_cells"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    if args.ca_secret is None:
        args.ca_secret = f"{args.namespace}/{CA_SECRET_NAME}"
    if args.prometheus_url is not None and not args.prometheus_url.startswith(
        ("http://", "https://")
    ):
        p.error(f"--prometheus-url {args.prometheus_url!r}: expected an http:// or https:// URL")
    namespace, slash, name = args.ca_secret.partition("/")
    if not (namespace and slash and name):
        p.error(f"--ca-secret {args.ca_secret!r}: expected namespace/name")
    return args


@dataclass
class Identity:
    authority: CertificateAuthority
    authenticator: Authenticator
    serving: ServingCertificate  # re-issued at two-thirds of its life


def certifiable(pod: PodInfo, *, mesh_namespace: str) -> bool:
    """May the agent of the pod's node hold a certificate for its service account? Meshed pods,
    and (router mode: the agent tunnels their router requests as them) unmeshed pods with their
    own network, outside nodemesh's namespace. Never a hostNetwork pod (the agent's own) nor
    the control plane's: they must not lend their service account's identity to the agent."""
    if pod.host_network or pod.phase in ("Succeeded", "Failed"):
        return False
    return pod.mesh.meshed or pod.key.namespace != mesh_namespace


def load_identity(args: argparse.Namespace, index: ClusterIndex, api: object) -> Identity:
    def pods_on_node(node: str) -> list[tuple[str, str]]:
        return [
            (p.key.namespace, p.service_account)
            for p in index.pods_on_node(node)
            if certifiable(p, mesh_namespace=args.namespace)
        ]

    def node_of_pod(namespace: str, name: str) -> str | None:
        pod = index.pods.get(PodKey(namespace, name))
        return pod.node if pod else None

    authenticator: Authenticator
    if args.identity_dir:
        bundle = load_ca_from_directory(args.identity_dir)
        authenticator = BootstrapTokenAuthenticator.from_file(
            Path(args.identity_dir) / "tokens.json"
        )
    else:
        namespace, _, name = args.ca_secret.partition("/")
        bundle = load_ca_from_secret(api, namespace=namespace, name=name)  # type: ignore[arg-type]
        authenticator = TokenReviewAuthenticator(
            api,  # type: ignore[arg-type]
            agent_service_account=(args.namespace, AGENT_SERVICE_ACCOUNT),
            node_of_pod=node_of_pod,
        )
    authority = CertificateAuthority(
        anchors=bundle.anchors,
        issuer=bundle.issuer,
        trust_domain=args.trust_domain,
        pods_on_node=pods_on_node,
    )
    serving = ServingCertificate(
        authority,
        identity=serving_identity(namespace=args.namespace, trust_domain=args.trust_domain),
        dns_names=serving_dns_names(namespace=args.namespace, cluster_domain=args.cluster_domain),
    )
    return Identity(authority, authenticator, serving)


def readiness(index: ClusterIndex) -> tuple[bool, str]:
    """Ready once every kind was listed. A kind whose watch is down later leaves it ready (the
    agents are better served the last known state than no control plane), but says so."""
    unsynced = index.unsynced()
    if any(since is None for since in unsynced.values()):
        listing = ", ".join(k for k, since in unsynced.items() if since is None)
        return False, f"not ready: index not synced (still listing {listing})"
    if not unsynced:
        return True, "ready: index synced"
    now = time.time()
    stale = ", ".join(f"{k} for {now - since:.0f}s" for k, since in unsynced.items() if since)
    return True, (
        f"ready, but index not synced: not following {stale} (the API server does not "
        "answer); serving the last known state"
    )


async def serve(args: argparse.Namespace) -> None:
    index = ClusterIndex(trust_domain=args.trust_domain)
    api = None
    source: Source
    if args.source == "local":
        source = LocalSource(args.state_dir)
    else:
        api = load_api_client(args.kubeconfig)
        source = KubeSource(api)
    identity = load_identity(args, index, api) if (args.identity_dir or api) else None
    if identity is None:
        log.warning("no --identity-dir: the CA is off and agents are not authenticated")

    hub = DestinationHub(index)
    broker = TapBroker(index, max_streams_per_caller=args.tap_streams_per_caller)
    worker = TelemetryWorker(
        args.telemetry_worker,
        max_series=args.telemetry_max_series,
        max_cells=args.telemetry_max_cells,
        log_level=args.log_level,
    )
    log.info("telemetry store in a %s worker (pid %d)", worker.mode, await worker.start())

    def peers() -> list[Peer]:
        # Without its own name a replica cannot tell itself from its peers: no peers then.
        if not args.pod_name:
            return []
        return find_peers(index, namespace=args.namespace, me=args.pod_name)

    forwarder = None
    token = None
    if identity is not None:
        token = peer_token(identity.authority.issuer.key)
        forwarder = ReportForwarder(
            peers=peers,
            port=_port(args.agent_addr),
            token=token,
            credentials=grpc.ssl_channel_credentials(
                root_certificates=identity.authority.anchors_pem().encode()
            )
            if args.agent_tls
            else None,
            server_name=serving_dns_names(
                namespace=args.namespace, cluster_domain=args.cluster_domain
            )[0],
            namespace=args.namespace,
        )

    telemetry = WorkerTelemetryService(
        worker, index=index, forward=forwarder.forward if forwarder else None
    )
    certify = None
    # Every call on the agent port proves which node's agent makes it, once, here (or, for
    # telemetry forwarded between replicas, which peer replica: their token is `peer_token`).
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if identity is not None:
        certify = IdentityService(authority=identity.authority)
        refused = {TELEMETRY_SERVICE: telemetry.refused, IDENTITY_SERVICE: certify.refused}
        interceptors.append(
            AgentAuthInterceptor(
                identity.authenticator,
                refused=refused,
                peers={TELEMETRY_SERVICE: partial(is_peer_token, expected=token)},
            )
        )
    # Let oversized telemetry reports reach the service, which refuses and counts them, rather
    # than being cut off by gRPC's own 4 MiB default where nobody sees why.
    agent_server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)],
        interceptors=interceptors,
    )
    add_destination(DestinationService(hub, wait_for_index=True), agent_server)
    tap_pb2_grpc.add_AgentTapServicer_to_server(AgentTapService(broker), agent_server)
    telemetry.add_to(agent_server)
    if certify is not None:
        certify.add_to(agent_server)
    if args.agent_tls:
        if identity is None:
            raise SystemExit("--agent-tls needs the CA (--identity-dir or the Kubernetes Secret)")
        creds = identity.serving.credentials()
        agent_server.add_secure_port(args.agent_addr, creds)
    else:
        log.warning("agent API on %s is plaintext (--no-agent-tls)", args.agent_addr)
        agent_server.add_insecure_port(args.agent_addr)

    review: AccessReview
    if args.access_file:
        review = LabAccessReview(args.access_file)
    elif api is not None:
        review = KubeAccessReview(api)
    else:
        log.warning("no --access-file and no Kubernetes API: the public API refuses every call")
        review = NoAccessReview()

    public_server = grpc.aio.server()
    stat_cache: StatCache[public_pb2.StatResponse | bytes] = StatCache()
    public = PublicService(
        index=index,
        telemetry=(
            PrometheusTelemetry(args.prometheus_url, WorkerTelemetry(worker))
            if args.prometheus_url
            else WorkerTelemetry(worker)
        ),
        broker=broker,
        hub=hub,
        source_name=args.source,
        gate=Gate(review),
        peers=peers,
        peer_port=_port(args.public_addr),
        stat_cache=stat_cache,
    )
    add_public(public, public_server)
    public_server.add_insecure_port(args.public_addr)

    admin = AdminServer(ready=lambda: readiness(index))
    host, _, port = args.admin_addr.rpartition(":")
    await admin.start(host or "0.0.0.0", int(port))

    listeners: list[Listener] = [hub.publish, broker.on_index_changes]

    # The worker checks that a report comes from a node the index knows.
    def known_nodes_changed(_changes: object, _rev: int) -> None:
        tasks.spawn(telemetry.on_index_changes(), name="telemetry-nodes")

    listeners.append(known_nodes_changed)
    if forwarder is not None:
        # Peers are known as soon as the index lists them: a report accepted before the first
        # periodic pass would reach no peer.
        listeners.append(lambda changes, _rev: forwarder.on_index_changes(changes))
    # A replica gone: the callers it served come here, to answers nobody asked of this one.
    listeners.append(
        PeersLeft(peers, then=lambda: public.build_ahead(args.stat_build_ahead_seconds))
    )
    feed = Feed(source, index, listeners)
    feed_task = tasks.spawn(feed.run(), name="feed")
    forward_task = tasks.spawn(forwarder.run(), name="peers") if forwarder else None
    await agent_server.start()
    await public_server.start()
    ahead_task = tasks.spawn(
        _build_ahead_once_synced(index, public, args.stat_build_ahead_seconds), name="stat ahead"
    )
    log.info(
        "control plane %s: source %s, agent API %s (%s), public API %s, admin %s",
        __version__,
        args.source,
        args.agent_addr,
        "TLS" if args.agent_tls else "plaintext",
        args.public_addr,
        args.admin_addr,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopper = tasks.spawn(stop.wait(), name="stop-signal")
    await asyncio.wait({stopper, feed_task}, return_when=asyncio.FIRST_COMPLETED)
    if feed_task.done() and not stop.is_set():
        log.error("the source ended; shutting down")
    log.info("draining (up to %.1fs)", args.drain_seconds)
    # Streams are long-lived: give unary calls the grace period, then cancel what is left.
    await asyncio.gather(
        agent_server.stop(grace=args.drain_seconds),
        public_server.stop(grace=args.drain_seconds),
    )
    await tasks.cancel_all(
        [t for t in (feed_task, stopper, forward_task, ahead_task) if t is not None]
    )
    await admin.close()
    stat_cache.close()
    worker.close()
    if api is not None:
        api.close()
    log.info("stopped")


async def _build_ahead_once_synced(
    index: ClusterIndex, public: PublicService, seconds: float
) -> None:
    """Stat answers built ahead from the moment the index holds the cluster: built before, an
    answer would show an empty cluster to a first call made just after the control plane said
    it was ready (the kept answer's 2 s)."""
    while not index.synced:
        await asyncio.sleep(INDEX_POLL)  # only in a control plane's first moments
    public.build_ahead(seconds)


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # urllib3 warns on each of its own quick retries; the source logs the failure that counts.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    keep_full_collections_short()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
