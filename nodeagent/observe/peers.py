"""How the mesh names the two ends of a connection in its events (events.Peer)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodeagent.observe.events import Peer
from nodemesh.model import PodInfo, Service

if TYPE_CHECKING:  # annotations only: observe/ does not import the proxy
    from nodeagent.proxy.routing import Routes, Target

# Peers are interned: the same pod or endpoint is the same Peer object on every connection.
# The telemetry aggregate keys its fast path by the peers' identities, so fresh objects per
# connection missed it every time and filled its alias table (up to 50 000 entries) under
# new-connection load. Bounded: cleared when full (later connections simply intern again).
MAX_INTERNED = 8192
_interned: dict[tuple[str, str, str, str, str, str, str], Peer] = {}


def peer(
    ip: str,
    namespace: str = "",
    pod: str = "",
    workload_kind: str = "",
    workload: str = "",
    service: str = "",
    identity: str = "",
) -> Peer:
    key = (ip, namespace, pod, workload_kind, workload, service, identity)
    found = _interned.get(key)
    if found is None:
        if len(_interned) >= MAX_INTERNED:
            _interned.clear()
        found = _interned[key] = Peer(*key)
    return found


def forget_gone(known: set[tuple[str, str]]) -> int:
    """Drop the interned peers of pods not in `known` (namespace, name); returns how many."""
    gone = [k for k in _interned if k[2] and (k[1], k[2]) not in known]
    for key in gone:
        del _interned[key]
    return len(gone)


def of_pod(info: PodInfo | None, *, ip: str, namespace: str = "", name: str = "") -> Peer:
    """A pod of this node (the listener's pod), from the table when it knows it."""
    if info is None:
        return peer(ip=ip, namespace=namespace, pod=name)
    return peer(
        ip=ip or info.ip,
        namespace=info.key.namespace,
        pod=info.key.name,
        workload_kind=info.workload.kind,
        workload=info.workload.name,
        identity=info.identity,
    )


def of_target(target: Target, service: Service | None) -> Peer:
    """The endpoint an outbound connection went to."""
    namespace = target.pod.namespace if target.pod is not None else ""
    if not namespace and service is not None:
        namespace = service.key.namespace
    return peer(
        ip=target.ip,
        namespace=namespace,
        pod=target.pod.name if target.pod is not None else "",
        workload_kind=target.workload.kind if target.workload is not None else "",
        workload=target.workload.name if target.workload is not None else "",
        service=service.key.name if service is not None else "",
        identity=target.identity,
    )


def of_client(
    routes: Routes, ip: str, *, identity: str = "", namespace: str = "", pod: str = ""
) -> Peer:
    """The client of an inbound connection, named from the table by its address.

    The address and the names only label metrics; `identity` is what TLS proved (or "").
    """
    local = routes.local_pod_by_ip(ip)
    if local is not None:
        return peer(
            ip=ip,
            namespace=local.key.namespace,
            pod=local.key.name,
            workload_kind=local.workload.kind,
            workload=local.workload.name,
            identity=identity,
        )
    ep = routes.endpoint_by_ip(ip)
    if ep is not None and ep.pod is not None:
        return peer(
            ip=ip,
            namespace=ep.pod.namespace,
            pod=ep.pod.name,
            workload_kind=ep.workload.kind if ep.workload is not None else "",
            workload=ep.workload.name if ep.workload is not None else "",
            identity=identity,
        )
    return peer(ip=ip, namespace=namespace, pod=pod, identity=identity)
