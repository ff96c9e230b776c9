"""What the ingress serves, derived from the cluster's objects (sans-io): the route table, each
backend's Service address (or why it cannot be reached) and the TLS certificates by host.

A bad Ingress is left out and a bad TLS Secret leaves its hosts on plain HTTP; both are listed
in `Snapshot.problems` (logged once by the caller), never raised."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ingress import certs, gateway
from ingress.certs import CertPair
from ingress.spec import BackendRef, BadIngress, IngressSpec, classes_served, is_served
from ingress.spec import read_ingress as read
from ingress.table import Match, RouteTable, normal_host

KINDS = ("IngressClass", "Ingress", "Service", "EndpointSlice", "Secret", "Gateway", "HTTPRoute")
# Gateway API CRDs may not be installed: a cluster without them has none of these.
OPTIONAL_KINDS = frozenset({"Gateway", "HTTPRoute"})
CLUSTER_SCOPED = frozenset({"IngressClass"})
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


@dataclass(frozen=True, slots=True)
class Upstream:
    address: str  # the Service's cluster IP: the node agent captures the connection
    port: int
    name: str  # namespace/service:port


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str


@dataclass
class Snapshot:
    table: RouteTable = field(default_factory=lambda: RouteTable(()))
    upstreams: dict[BackendRef, Upstream | Refusal] = field(default_factory=dict)
    certs: dict[str, CertPair] = field(default_factory=dict)  # host or "*.suffix"
    default_cert: CertPair | None = None
    problems: list[str] = field(default_factory=list)
    ingresses: int = 0

    def route(self, host: str, path: str) -> tuple[Match | None, Upstream | Refusal]:
        m = self.table.match(host, path)
        if m is None:
            return None, Refusal(404, "no Ingress rule matches this host and path")
        return m, self.upstreams.get(m.backend, Refusal(503, f"{m.backend}: unknown backend"))

    def cert_for(self, server_name: str | None) -> CertPair | None:
        if server_name:
            host = normal_host(server_name)
            pair = self.certs.get(host)
            if pair is None and "." in host:
                pair = self.certs.get("*." + host.split(".", 1)[1])
            if pair is not None:
                return pair
        return self.default_cert


class Objects:
    """The objects of KINDS, as a source reports them."""

    def __init__(self, *, class_name: str = "nodemesh") -> None:
        self.class_name = class_name
        self.kinds: dict[str, dict[Key, Obj]] = {k: {} for k in KINDS}

    @staticmethod
    def key(kind: str, obj: Obj) -> Key:
        meta = obj.get("metadata") or {}
        ns = "" if kind in CLUSTER_SCOPED else str(meta.get("namespace") or "default")
        return ns, str(meta.get("name") or "")

    def put(self, kind: str, obj: Obj) -> None:
        self.kinds[kind][self.key(kind, obj)] = obj

    def delete(self, kind: str, obj: Obj) -> None:
        self.kinds[kind].pop(self.key(kind, obj), None)

    def replace(self, kind: str, objs: Iterable[Obj]) -> None:
        self.kinds[kind] = {self.key(kind, o): o for o in objs}

    def snapshot(self) -> Snapshot:
        snap = Snapshot()
        served = classes_served(list(self.kinds["IngressClass"].values()), name=self.class_name)
        specs: list[IngressSpec] = []
        for obj in self.kinds["Ingress"].values():
            if not is_served(obj, served):
                continue
            try:
                specs.append(read(obj))
            except BadIngress as e:
                snap.problems.append(f"{e}; this Ingress is not served")
        specs += self._gateway_specs(snap)
        snap.ingresses = len(specs)
        snap.table = RouteTable(specs)
        for ref in snap.table.backends():
            snap.upstreams[ref] = self._resolve(ref)
        self._certs(specs, snap)
        return snap

    def _gateway_specs(self, snap: Snapshot) -> list[IngressSpec]:
        specs: list[IngressSpec] = []
        served: dict[gateway.GatewayRef, tuple[str, ...]] = {}
        for (ns, name), obj in sorted(self.kinds["Gateway"].items()):
            if (obj.get("spec") or {}).get("gatewayClassName") != self.class_name:
                continue
            try:
                specs.append(gateway.read_gateway(obj))
            except gateway.BadRoute as e:
                snap.problems.append(f"{e}; this Gateway is not served")
                continue
            served[gateway.GatewayRef(ns, name)] = gateway.listener_hosts(obj)
        for obj in self.kinds["HTTPRoute"].values():
            attached = [p for p in gateway.parents(obj) if p in served]
            if not attached:
                continue
            try:
                specs.append(gateway.read_route(obj, served[attached[0]]))
            except gateway.BadRoute as e:
                snap.problems.append(f"{e}; this HTTPRoute is not served")
        return specs

    def _resolve(self, ref: BackendRef) -> Upstream | Refusal:
        svc = self.kinds["Service"].get((ref.namespace, ref.service))
        if svc is None:
            return Refusal(503, f"Service {ref.namespace}/{ref.service} not found")
        spec = svc.get("spec") or {}
        ports = spec.get("ports") or []
        if isinstance(ref.port, int):
            port = next((p for p in ports if p.get("port") == ref.port), None)
        else:
            port = next((p for p in ports if p.get("name") == ref.port), None)
        if port is None:
            return Refusal(503, f"Service {ref.namespace}/{ref.service} has no port {ref.port}")
        ip = spec.get("clusterIP")
        if not ip or ip == "None":
            return Refusal(503, f"Service {ref.namespace}/{ref.service} has no cluster IP")
        if not self._has_endpoints(ref.namespace, ref.service):
            return Refusal(503, f"Service {ref.namespace}/{ref.service} has no ready endpoints")
        return Upstream(str(ip), int(port["port"]), str(ref))

    def _has_endpoints(self, ns: str, service: str) -> bool:
        for (sns, _), sl in self.kinds["EndpointSlice"].items():
            labels = (sl.get("metadata") or {}).get("labels") or {}
            if sns != ns or labels.get(SERVICE_NAME_LABEL) != service:
                continue
            for ep in sl.get("endpoints") or []:
                if ep.get("addresses") and (ep.get("conditions") or {}).get("ready", True):
                    return True
        return False

    def _certs(self, specs: list[IngressSpec], snap: Snapshot) -> None:
        for spec in sorted(specs, key=lambda s: (s.created, s.namespace, s.name)):
            for i, entry in enumerate(spec.tls):
                hosts = entry.hosts or spec.hosts()
                where = f"Ingress {spec.ref}: spec.tls[{i}]"
                if not entry.secret:
                    snap.problems.append(f"{where}: no secretName; {_plain(hosts)}")
                    continue
                secret = self.kinds["Secret"].get((spec.namespace, entry.secret))
                if secret is None:
                    snap.problems.append(
                        f"{where}: Secret {spec.namespace}/{entry.secret} not found; "
                        f"{_plain(hosts)}"
                    )
                    continue
                try:
                    pair = certs.from_secret(secret)
                except certs.BadSecret as e:
                    snap.problems.append(f"{where}: {e}; {_plain(hosts)}")
                    continue
                if snap.default_cert is None:
                    snap.default_cert = pair
                for host in hosts:
                    snap.certs.setdefault(host, pair)


def _plain(hosts: Iterable[str]) -> str:
    listed = ", ".join(hosts) or "its hosts"
    return f"{listed} served over HTTP only"
