"""The agent's command line: flags, their defaults, and the settings object built from them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nodemesh import ports

DEFAULT_CNI_SOCKET = "/var/run/nodemesh/cni.sock"
DEFAULT_STATE_FILE = "/var/run/nodemesh/agent-state.json"
DEFAULT_CONTROLPLANE = f"nodemesh-controlplane.nodemesh.svc.cluster.local:{ports.AGENT_API}"
DEFAULT_ADMIN = f"0.0.0.0:{ports.AGENT_ADMIN}"
DEFAULT_MARK = 0x6E6D


@dataclass(frozen=True)
class AgentConfig:
    node: str
    cni_socket: Path = Path(DEFAULT_CNI_SOCKET)
    state_file: Path = Path(DEFAULT_STATE_FILE)
    # Table and certificates kept across restarts (keys inside: root only). None: beside the
    # state file, in its own 0700 directory.
    serving_state: Path | None = None
    controlplane: str = DEFAULT_CONTROLPLANE
    controlplane_insecure: bool = False
    controlplane_ca: Path | None = None
    # The agent's node credential: a lab bootstrap token, or a projected service-account token.
    token_file: Path | None = None
    admin_host: str = "0.0.0.0"
    admin_port: int = ports.AGENT_ADMIN
    # Router mode (nodeagent.proxy.router): the explicit proxy on the node; port 0 turns it off.
    router_host: str = "0.0.0.0"
    router_port: int = ports.ROUTER
    netns_dir: Path = Path("/run/netns")
    mark: int = DEFAULT_MARK
    # How long an ADD waits for the control plane to tell the agent about a new pod.
    pod_wait_seconds: float = 5.0
    # SIGTERM: open connections get this long to finish before they are cut.
    drain_seconds: float = 10.0
    # Where this agent offers its sockets to a successor (and looks for a predecessor's);
    # None: next to the state file.
    handover_socket: Path | None = None
    # SIGTERM with no successor yet: serve on (accepting) this long while one may still come.
    handover_wait_seconds: float = 15.0
    # A successor waits at most this long for the control plane's table and its pods'
    # certificates before it takes the sockets over anyway.
    warm_up_seconds: float = 20.0
    # SIGTERM: how long to wait for install-cni's uninstall flag (nodeagent.enrol.uninstalling)
    # before leaving the pods' rules in place for the next agent.
    uninstall_wait_seconds: float = 0.0
    log_level: str = "info"
    # Series of a pod the table no longer knows stay on /metrics this long (Prometheus scrapes
    # their last values), then go (nodeagent.observe.stats.series.GONE_POD_GRACE).
    gone_pod_grace_seconds: float = 120.0
    # A relay half-closed one way and then idle both ways this long is closed (l4proxy).
    half_closed_timeout_seconds: float = 60.0
    # L7 path (HTTP/1): a request body may take this long waiting on the client, plus a second
    # per request_body_min_rate bytes it sent; slower is answered 408 (l7.http1.BODY_TIMEOUT).
    request_body_timeout_seconds: float = 60.0
    request_body_min_rate: int = 1024
    # Names under svc.<cluster_domain> are answered from the destination table.
    cluster_domain: str = "cluster.local"
    # Report statistics to the control plane and take tap subscriptions from it.
    telemetry: bool = True
    # Trust anchor(s) of the mesh's workload certificates; defaults to controlplane_ca (the
    # lab's ca.crt is both). None: no mTLS between agents (meshed traffic goes plain).
    trust_anchors: Path | None = None
    # Offer TLS session tickets between agents (off only to measure what they save).
    tls_resumption: bool = True
    tunnel_mux: bool = True
    # Observe each request once when both ends are meshed: the client's agent reports it for
    # the server's agent too, which then relays without parsing (off: both agents parse).
    observe_once: bool = True
    # Run as a socket keeper that starts the agent as its child (nodeagent.handover.keeper).
    keep_sockets: bool = False
    # ... and mirror them to the socket park beside the container (nodeagent.handover.park).
    socket_park: Path | None = None
    # Test aid: also write every observation event as a JSON line to this file.
    record_events: Path | None = None
    # Debugging aid: where SIGUSR2 writes the memory report (nodeagent.heap).
    memory_report_dir: Path = Path("/tmp")

    @property
    def handover_path(self) -> Path:
        return self.handover_socket or self.state_file.parent / "handover.sock"

    @property
    def serving_state_file(self) -> Path:
        return self.serving_state or self.state_file.parent / "agent-private" / "serving.json"


def _mark(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (e.g. 0x6e6d)") from None
    if not 0 < value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"mark {text} is not a non-zero 32-bit value")
    return value


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nodemesh-agent",
        description="nodemesh node agent: enrols this node's pods and proxies their traffic",
    )
    p.add_argument("--node", required=True, help="name of the node this agent serves")
    p.add_argument("--cni-socket", default=DEFAULT_CNI_SOCKET, help="unix socket for nodemesh-cni")
    p.add_argument("--state-file", default=DEFAULT_STATE_FILE, help="where enrolled pods are kept")
    p.add_argument(
        "--serving-state",
        default=None,
        help="where the last table and the pods' certificates are kept across restarts "
        "(default: agent-private/serving.json beside --state-file)",
    )
    p.add_argument(
        "--controlplane",
        default=DEFAULT_CONTROLPLANE,
        help="destination API as HOST:PORT (or unix:/path for a local socket)",
    )
    p.add_argument(
        "--controlplane-insecure",
        action="store_true",
        help="plaintext gRPC to the control plane (until agent identities exist)",
    )
    p.add_argument("--controlplane-ca", default=None, help="PEM trust anchor for the control plane")
    p.add_argument(
        "--token-file",
        default=None,
        help="node credential sent to the control plane: a token file, or the lab's "
        "tokens.json (the entry for --node is used)",
    )
    p.add_argument("--admin-addr", default=DEFAULT_ADMIN, type=_host_port, help="/metrics, /ready")
    p.add_argument(
        "--router-addr",
        default=f"0.0.0.0:{ports.ROUTER}",
        type=_host_port,
        help="router mode: where the node's explicit HTTP proxy (absolute-form requests and "
        "CONNECT from this node's pods) listens",
    )
    p.add_argument(
        "--no-router",
        dest="router",
        action="store_false",
        help="no router mode: open no explicit proxy port on the node",
    )
    p.add_argument("--netns-dir", default="/run/netns", help="where pod network namespaces live")
    p.add_argument("--mark", default=DEFAULT_MARK, type=_mark, help="SO_MARK of agent sockets")
    p.add_argument("--pod-wait-seconds", default=5.0, type=_positive)
    p.add_argument("--drain-seconds", default=10.0, type=_positive)
    p.add_argument(
        "--handover-socket",
        default=None,
        help="unix socket to hand listening sockets over to a successor agent "
        "(default: handover.sock next to --state-file)",
    )
    p.add_argument(
        "--handover-wait-seconds",
        default=15.0,
        type=_positive,
        help="on SIGTERM with no successor: keep serving this long while one may come",
    )
    p.add_argument(
        "--warm-up-seconds",
        default=20.0,
        type=_positive,
        help="a successor waits this long for the control plane before taking over anyway",
    )
    p.add_argument(
        "--uninstall-wait-seconds",
        default=0.0,
        type=float,
        help="on SIGTERM, wait this long for install-cni's uninstall flag in the CNI socket's "
        "directory (then every pod's rules are removed) before leaving them for the next agent",
    )
    p.add_argument(
        "--gone-pod-grace-seconds",
        default=120.0,
        type=_positive,
        help="keep the metric series of a pod that left the cluster this long (so Prometheus "
        "scrapes their last values), then forget them",
    )
    p.add_argument(
        "--half-closed-timeout-seconds",
        default=60.0,
        type=_positive,
        help="close a relayed connection that one side half-closed once nothing moved either "
        "way for this long",
    )
    p.add_argument(
        "--request-body-timeout-seconds",
        default=60.0,
        type=_positive,
        help="L7 path (HTTP/1): answer 408 to a request whose body the client took longer than "
        "this to send, plus a second per --request-body-min-rate bytes it sent",
    )
    p.add_argument(
        "--request-body-min-rate",
        default=1024,
        type=_positive_int,
        help="L7 path (HTTP/1): bytes a second a request body earns the client more time with",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--cluster-domain",
        default="cluster.local",
        type=_domain,
        help="cluster DNS domain: <svc>.<ns>.svc.<domain> is answered from the table",
    )
    p.add_argument(
        "--no-telemetry",
        dest="telemetry",
        action="store_false",
        help="send no statistics reports and take no taps (the /metrics port still works)",
    )
    p.add_argument(
        "--trust-anchors",
        default=None,
        help="PEM trust anchor(s) for workload certificates (default: --controlplane-ca)",
    )
    p.add_argument(
        "--no-tls-resumption",
        dest="tls_resumption",
        action="store_false",
        help="full TLS handshakes between agents every time (to measure resumption)",
    )
    p.add_argument(
        "--no-tunnel-mux",
        dest="tunnel_mux",
        action="store_false",
        help="one tunnel connection (and TLS handshake) per app connection to a peer agent, "
        "instead of streams of a few shared ones (the accepting side takes both either way)",
    )
    p.add_argument(
        "--no-observe-once",
        dest="observe_once",
        action="store_false",
        help="both agents parse every meshed connection's HTTP, instead of the client's agent "
        "reporting each request for both ends (an agent always takes this offer from a peer)",
    )
    p.add_argument(
        "--keep-sockets",
        action="store_true",
        help="run the agent under a parent that keeps its listening sockets open and restarts "
        "it at once if it dies, so a crash refuses no new connection",
    )
    p.add_argument(
        "--socket-park",
        default=None,
        help="with --keep-sockets: the unix socket of the socket park in a sibling container "
        "(python -m nodeagent.socketpark), which holds the listening sockets while this "
        "container restarts",
    )
    p.add_argument("--record-events", default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory-report-dir", default="/tmp", help=argparse.SUPPRESS)
    return p


def _domain(text: str) -> str:
    domain = text.strip(".").lower()
    labels = domain.split(".")
    if not domain or any(not label or len(label) > 63 for label in labels) or len(domain) > 200:
        raise argparse.ArgumentTypeError(f"{text!r} is not a DNS domain")
    return domain


def _anchors(ns: argparse.Namespace) -> Path | None:
    anchors = ns.trust_anchors or ns.controlplane_ca
    return Path(anchors) if anchors else None


def parse_args(argv: Sequence[str] | None = None) -> AgentConfig:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.socket_park and not ns.keep_sockets:
        parser.error("--socket-park needs --keep-sockets (the keeper is what parks the sockets)")
    if ns.socket_park and not ns.socket_park.startswith("/"):
        parser.error(f"--socket-park {ns.socket_park}: must be an absolute path")
    host, port = ns.admin_addr
    router_host, router_port = ns.router_addr
    return AgentConfig(
        node=ns.node,
        cni_socket=Path(ns.cni_socket),
        state_file=Path(ns.state_file),
        serving_state=Path(ns.serving_state) if ns.serving_state else None,
        controlplane=ns.controlplane,
        controlplane_insecure=ns.controlplane_insecure,
        controlplane_ca=Path(ns.controlplane_ca) if ns.controlplane_ca else None,
        token_file=Path(ns.token_file) if ns.token_file else None,
        admin_host=host,
        admin_port=port,
        router_host=router_host,
        router_port=router_port if ns.router else 0,
        netns_dir=Path(ns.netns_dir),
        mark=ns.mark,
        pod_wait_seconds=ns.pod_wait_seconds,
        drain_seconds=ns.drain_seconds,
        handover_socket=Path(ns.handover_socket) if ns.handover_socket else None,
        handover_wait_seconds=ns.handover_wait_seconds,
        warm_up_seconds=ns.warm_up_seconds,
        uninstall_wait_seconds=max(0.0, ns.uninstall_wait_seconds),
        log_level=ns.log_level,
        gone_pod_grace_seconds=ns.gone_pod_grace_seconds,
        half_closed_timeout_seconds=ns.half_closed_timeout_seconds,
        request_body_timeout_seconds=ns.request_body_timeout_seconds,
        request_body_min_rate=ns.request_body_min_rate,
        cluster_domain=ns.cluster_domain,
        telemetry=ns.telemetry,
        trust_anchors=_anchors(ns),
        tls_resumption=ns.tls_resumption,
        tunnel_mux=ns.tunnel_mux,
        observe_once=ns.observe_once,
        keep_sockets=ns.keep_sockets,
        socket_park=Path(ns.socket_park) if ns.socket_park else None,
        record_events=Path(ns.record_events) if ns.record_events else None,
        memory_report_dir=Path(ns.memory_report_dir),
    )
