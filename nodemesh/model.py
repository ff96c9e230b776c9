"""The cluster as the mesh sees it: keys, pods, workloads, services, endpoints (shared)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class InboundMode(StrEnum):
    PERMISSIVE = "permissive"
    STRICT = "strict"


class PortSpecError(ValueError):
    """A port list such as `80,8000-8010` that cannot be read; the message says what is wrong."""


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    first: int
    last: int

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.first <= port <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True)
class PortSet:
    """A set of TCP ports kept as sorted, merged ranges (so `1-65535` costs one entry)."""

    ranges: tuple[PortRange, ...] = ()

    @classmethod
    def parse(cls, text: str) -> PortSet:
        """Read `80, 443,8000-8010`; raise PortSpecError naming the bad item."""
        found: list[PortRange] = []
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            first_s, dash, last_s = item.partition("-")
            first = _port(first_s, item)
            last = _port(last_s, item) if dash else first
            if last < first:
                raise PortSpecError(f"{item!r}: range end {last} is below its start {first}")
            found.append(PortRange(first, last))
        return cls.of(found)

    @classmethod
    def of(cls, ranges: list[PortRange]) -> PortSet:
        merged: list[PortRange] = []
        for r in sorted(ranges):
            if merged and r.first <= merged[-1].last + 1:
                if r.last > merged[-1].last:
                    merged[-1] = PortRange(merged[-1].first, r.last)
            else:
                merged.append(r)
        return cls(tuple(merged))

    def __contains__(self, port: object) -> bool:
        return any(port in r for r in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)


def _port(text: str, item: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise PortSpecError(f"{item!r}: {text!r} is not a port number")
    value = int(text)
    if not 1 <= value <= 65535:
        raise PortSpecError(f"{item!r}: {value} is outside 1-65535")
    return value


@dataclass(frozen=True, slots=True, order=True)
class PodKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class WorkloadRef:
    """What a pod belongs to: Deployment, StatefulSet, DaemonSet, other controller, or itself."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class MeshSettings:
    """How the mesh treats one pod, resolved from its namespace and its own labels/annotations."""

    meshed: bool
    inbound_mode: InboundMode = InboundMode.PERMISSIVE
    opaque_ports: PortSet = PortSet()
    skip_inbound_ports: PortSet = PortSet()
    skip_outbound_ports: PortSet = PortSet()
    # Annotations that could not be read, with the reason; their defaults were used instead.
    errors: tuple[str, ...] = ()
    # UDP ports a strict pod still accepts from anyone (UDP is never proxied nor authenticated).
    allow_inbound_udp_ports: PortSet = PortSet()


@dataclass(frozen=True, slots=True)
class PodInfo:
    key: PodKey
    uid: str
    node: str
    ip: str
    host_ip: str
    phase: str
    ready: bool
    service_account: str
    identity: str
    workload: WorkloadRef
    mesh: MeshSettings
    host_network: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    terminating: bool = False  # deleted, in its grace period (metadata.deletionTimestamp set)


@dataclass(frozen=True, slots=True)
class MeshedPod:
    """A meshed pod of any node: what another node's agent needs to tunnel to it by pod IP."""

    key: PodKey
    ip: str
    node: str
    identity: str
    workload: WorkloadRef
    inbound_mode: InboundMode = InboundMode.PERMISSIVE
    opaque_ports: PortSet = PortSet()

    @classmethod
    def of(cls, pod: PodInfo) -> MeshedPod | None:
        """The pod as other agents see it; None unless it is meshed, running and addressable."""
        if (
            not pod.mesh.meshed
            or pod.host_network
            or not pod.ip
            or not pod.identity
            or pod.phase in ("Succeeded", "Failed")
        ):
            return None
        return cls(
            key=pod.key,
            ip=pod.ip,
            node=pod.node,
            identity=pod.identity,
            workload=pod.workload,
            inbound_mode=pod.mesh.inbound_mode,
            opaque_ports=pod.mesh.opaque_ports,
        )


@dataclass(frozen=True, slots=True)
class Workload:
    ref: WorkloadRef
    # SPIFFE IDs its pods run as (normally one); from the pod template when no pod exists yet.
    identities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, order=True)
class EndpointPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    ports: tuple[EndpointPort, ...]
    ready: bool
    node: str = ""
    pod: PodKey | None = None
    workload: WorkloadRef | None = None
    identity: str = ""
    meshed: bool = False
    terminating: bool = False
    opaque_ports: PortSet = PortSet()


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class Service:
    key: ServiceKey
    cluster_ips: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    endpoints: tuple[Endpoint, ...] = ()
    opaque_ports: PortSet = PortSet()
    # A router-compatible Service (nodemesh.io/router: "true"): requests sent to it are routed
    # by their Host (or proxy target) by the caller's node agent, with or without pods behind it.
    router: bool = False

    @property
    def headless(self) -> bool:
        return not self.cluster_ips


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    internal_ip: str
    pod_cidr: str
    ready: bool
