"""Where an outbound connection goes, from the agent's destination table (sans-io).

`Routes(table).resolve(ip, port)` answers with a `Route`: the candidate `Target`s (several for a
Service VIP, one for a pod IP or a headless Service's pod) or none for a destination the mesh does
not know (then the connection goes where the app asked, plainly). A pod IP is known from this
node's pods, the cluster's meshed pods (those that back no Service too) and Service endpoints,
in that order. The IP indexes are rebuilt only when the table's revision moves, so a lookup is
a few dict reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent import podplan
from nodeagent.upstream.table import DestinationTable
from nodemesh.model import (
    Endpoint,
    MeshedPod,
    PodInfo,
    PodKey,
    Service,
    ServicePort,
    WorkloadRef,
)


@dataclass(frozen=True, slots=True)
class Target:
    """One place a connection may be sent: an endpoint's address and what the mesh knows of it."""

    ip: str
    port: int
    meshed: bool = False
    identity: str = ""  # SPIFFE ID the destination must prove; "" when not meshed
    pod: PodKey | None = None
    workload: WorkloadRef | None = None
    opaque: bool = False  # the destination declared this port opaque

    @property
    def key(self) -> tuple[str, int]:
        return self.ip, self.port


@dataclass(frozen=True, slots=True)
class Route:
    """The answer for one original destination; `targets` empty means "unknown: pass through"."""

    ip: str
    port: int
    targets: tuple[Target, ...] = ()
    service: Service | None = None
    # A Service VIP whose port is known but which has no ready endpoint: refuse the connection.
    no_endpoints: bool = False

    @property
    def known(self) -> bool:
        return bool(self.targets)

    @property
    def opaque(self) -> bool:
        """The Service or its endpoints marked the port opaque (skip protocol detection)."""
        if self.service is not None and self.port in self.service.opaque_ports:
            return True
        return bool(self.targets) and all(t.opaque for t in self.targets)


def service_port(service: Service, port: int) -> ServicePort | None:
    for sp in service.ports:
        if sp.port == port and sp.protocol.upper() == "TCP":
            return sp
    return None


def endpoint_port(endpoint: Endpoint, sp: ServicePort) -> int | None:
    """The endpoint's port for a Service port: by name as in EndpointSlices, else targetPort."""
    for ep in endpoint.ports:
        if ep.name == sp.name and ep.protocol.upper() == "TCP":
            return ep.port
    if isinstance(sp.target_port, int) and sp.target_port > 0:
        return sp.target_port
    return None


def _target_of(endpoint: Endpoint, port: int) -> Target:
    return Target(
        ip=endpoint.ip,
        port=port,
        meshed=endpoint.meshed and bool(endpoint.identity),
        identity=endpoint.identity if endpoint.meshed else "",
        pod=endpoint.pod,
        workload=endpoint.workload,
        opaque=port in endpoint.opaque_ports,
    )


def _target_of_pod(info: PodInfo, port: int) -> Target:
    meshed = podplan.wants_mesh(info) and bool(info.identity)
    return Target(
        ip=info.ip,
        port=port,
        meshed=meshed,
        identity=info.identity if meshed else "",
        pod=info.key,
        workload=info.workload,
        opaque=port in info.mesh.opaque_ports,
    )


def _target_of_meshed(pod: MeshedPod, port: int) -> Target:
    return Target(
        ip=pod.ip,
        port=port,
        meshed=True,
        identity=pod.identity,
        pod=pod.key,
        workload=pod.workload,
        opaque=port in pod.opaque_ports,
    )


class Routes:
    def __init__(self, table: DestinationTable) -> None:
        self.table = table
        self._revision: tuple[int, int, int, int] | None = None
        self._endpoints: dict[str, Endpoint] = {}
        self._local_pods: dict[str, PodInfo] = {}
        self._meshed: dict[str, MeshedPod] = {}

    def _refresh(self) -> None:
        t = self.table
        stamp = (t.revision, id(t.services), id(t.pods), id(t.meshed_pods))
        if stamp == self._revision:
            return
        endpoints: dict[str, Endpoint] = {}
        for service in t.services.values():
            for ep in service.endpoints:
                # A ready, meshed record wins over a stale or unmeshed one for the same IP.
                held = endpoints.get(ep.ip)
                if held is None or (ep.ready and not held.ready) or (ep.meshed and not held.meshed):
                    endpoints[ep.ip] = ep
        self._endpoints = endpoints
        self._local_pods = {p.ip: p for p in t.pods.values() if p.ip and not p.host_network}
        self._meshed = {m.ip: m for m in t.meshed_pods.values() if m.ip}
        self._revision = stamp

    def endpoint_by_ip(self, ip: str) -> Endpoint | None:
        self._refresh()
        return self._endpoints.get(ip)

    def local_pod_by_ip(self, ip: str) -> PodInfo | None:
        self._refresh()
        return self._local_pods.get(ip)

    def resolve(self, ip: str, port: int) -> Route:
        self._refresh()
        service = self.table.service_by_ip(ip)
        if service is not None:
            sp = service_port(service, port)
            if sp is None:
                return Route(ip, port, service=service)
            targets = []
            for ep in service.endpoints:
                if not ep.ready or ep.terminating:
                    continue
                target_port = endpoint_port(ep, sp)
                if target_port is not None:
                    targets.append(_target_of(ep, target_port))
            return Route(ip, port, tuple(targets), service, no_endpoints=not targets)
        local = self._local_pods.get(ip)
        if local is not None:
            return Route(ip, port, (_target_of_pod(local, port),))
        meshed = self._meshed.get(ip)
        if meshed is not None:
            return Route(ip, port, (_target_of_meshed(meshed, port),))
        remote = self._endpoints.get(ip)
        if remote is not None:
            return Route(ip, port, (_target_of(remote, port),))
        return Route(ip, port)
