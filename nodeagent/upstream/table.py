"""The agent's copy of the control plane's destination state (sans-io: updates in, changes out).

The destination stream sends a snapshot in parts, then deltas. A snapshot replaces everything
once its last part has arrived; until then the previous table keeps serving. The table outlives
any one stream, so the agent routes and enrols from it while the control plane is away, and
`snapshot()` gives it back as one Snapshot message for the agent to keep across its restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nodemesh import authz, authz_codec
from nodemesh import destination_codec as codec
from nodemesh.api import destination_pb2 as pb
from nodemesh.model import (
    MeshedPod,
    PodInfo,
    PodKey,
    Service,
    ServiceKey,
    Workload,
    WorkloadRef,
)
from nodemesh.routing import codec as route_codec
from nodemesh.routing.table import RouteTable


@dataclass(frozen=True)
class TableChanged:
    """What one applied update changed; `pods` are the keys of this node's pods touched."""

    pods: frozenset[PodKey] = frozenset()
    services: frozenset[ServiceKey] = frozenset()
    snapshot: bool = False


@dataclass
class _Pending:
    services: list[pb.Service] = field(default_factory=list)
    workloads: list[pb.Workload] = field(default_factory=list)
    pods: list[pb.Pod] = field(default_factory=list)
    meshed_pods: list[pb.MeshedPod] = field(default_factory=list)
    authz_policies: list[pb.AuthzPolicy] = field(default_factory=list)
    routes: list[pb.Route] = field(default_factory=list)


class DestinationTable:
    def __init__(self, node: str) -> None:
        self.node = node
        self.services: dict[ServiceKey, Service] = {}
        self.workloads: dict[WorkloadRef, Workload] = {}
        self.pods: dict[PodKey, PodInfo] = {}
        # Meshed pods of every node (this one's too): a pod IP in here is tunnelled to.
        self.meshed_pods: dict[PodKey, MeshedPod] = {}
        # Authorization policies compiled for this node's pods (nodemesh.authz).
        self.authz = authz.PolicyTable()
        # Mesh routes (HTTPRoute/GRPCRoute) by the Service they attach to: the L7 path's rules.
        self.routes = RouteTable()
        self.revision = 0
        # True once a whole snapshot has arrived (from any stream, ever).
        self.synced = False
        self._by_ip: dict[str, ServiceKey] = {}
        self._pending: _Pending | None = None

    def pod(self, key: PodKey) -> PodInfo | None:
        return self.pods.get(key)

    def known_pods(self) -> set[tuple[str, str]]:
        """(namespace, name) of every pod the table names: this node's, the meshed pods of
        every node and the services' endpoints. What is not in here has left the cluster."""
        known = {(k.namespace, k.name) for k in self.pods}
        known.update((k.namespace, k.name) for k in self.meshed_pods)
        for service in self.services.values():
            for ep in service.endpoints:
                if ep.pod is not None:
                    known.add((ep.pod.namespace, ep.pod.name))
        return known

    def service_by_ip(self, ip: str) -> Service | None:
        key = self._by_ip.get(ip)
        return self.services.get(key) if key is not None else None

    def stream_restarted(self) -> None:
        """A new stream begins: half a snapshot from the old one must not be merged into it."""
        self._pending = None

    def apply(self, update: pb.Update) -> TableChanged | None:
        """Apply one Update; returns what changed, or None while a snapshot is incomplete."""
        kind = update.WhichOneof("kind")
        if kind == "snapshot":
            pending = self._pending or _Pending()
            pending.services += update.snapshot.services
            pending.workloads += update.snapshot.workloads
            pending.pods += update.snapshot.pods
            pending.meshed_pods += update.snapshot.meshed_pods
            pending.authz_policies += update.snapshot.authz_policies
            pending.routes += update.snapshot.routes
            if not update.snapshot.last:
                self._pending = pending
                return None
            self._pending = None
            self.revision = update.revision
            return self._replace(pending)
        if kind == "delta":
            if self._pending is not None:
                raise ValueError("delta received in the middle of a snapshot")
            self.revision = update.revision
            return self._apply_delta(update.delta)
        raise ValueError(f"update carries neither snapshot nor delta ({kind!r})")

    def _replace(self, snap: _Pending) -> TableChanged:
        old_pods, old_services = self.pods, self.services
        self.services = {}
        self._by_ip = {}
        for s in snap.services:
            self._put_service(codec.service_from_pb(s))
        self.workloads = {}
        for w in snap.workloads:
            workload = codec.workload_from_pb(w)
            self.workloads[workload.ref] = workload
        self.pods = {}
        for p in snap.pods:
            self._put_pod(codec.pod_from_pb(p))
        self.meshed_pods = {}
        for m in snap.meshed_pods:
            meshed = codec.meshed_pod_from_pb(m)
            self.meshed_pods[meshed.key] = meshed
        self.authz.replace(authz_codec.policy_from_pb(p) for p in snap.authz_policies)
        self.routes.replace([route_codec.route_from_pb(r) for r in snap.routes])
        self.synced = True
        pods = {
            k for k in old_pods.keys() | self.pods.keys() if old_pods.get(k) != self.pods.get(k)
        }
        services = {
            k
            for k in old_services.keys() | self.services.keys()
            if old_services.get(k) != self.services.get(k)
        }
        return TableChanged(frozenset(pods), frozenset(services), snapshot=True)

    def _apply_delta(self, d: pb.Delta) -> TableChanged:
        pods: set[PodKey] = set()
        services: set[ServiceKey] = set()
        for s in d.services_updated:
            service = codec.service_from_pb(s)
            self._drop_service(service.key)
            self._put_service(service)
            services.add(service.key)
        for sk in d.services_removed:
            skey = ServiceKey(sk.namespace, sk.name)
            self._drop_service(skey)
            services.add(skey)
        for w in d.workloads_updated:
            workload = codec.workload_from_pb(w)
            self.workloads[workload.ref] = workload
        for wr in d.workloads_removed:
            self.workloads.pop(codec.workload_ref_from_pb(wr), None)
        for p in d.pods_updated:
            info = codec.pod_from_pb(p)
            if self._put_pod(info):
                pods.add(info.key)
        for pk in d.pods_removed:
            key = PodKey(pk.namespace, pk.name)
            if self.pods.pop(key, None) is not None:
                pods.add(key)
        for m in d.meshed_pods_updated:
            meshed = codec.meshed_pod_from_pb(m)
            self.meshed_pods[meshed.key] = meshed
        for pk in d.meshed_pods_removed:
            self.meshed_pods.pop(PodKey(pk.namespace, pk.name), None)
        if d.authz_policies_updated or d.authz_policies_removed:
            self.authz.update(
                [authz_codec.policy_from_pb(p) for p in d.authz_policies_updated],
                [authz_codec.key_from_pb(k) for k in d.authz_policies_removed],
            )
        for r in d.routes_updated:
            self.routes.update(route_codec.route_from_pb(r))
        for rk in d.routes_removed:
            self.routes.remove(route_codec.route_key_from_pb(rk))
        return TableChanged(frozenset(pods), frozenset(services))

    def snapshot(self) -> pb.Snapshot:
        """The whole table as one complete Snapshot (what `apply` would rebuild it from)."""
        return pb.Snapshot(
            services=[codec.service_to_pb(s) for _, s in sorted(self.services.items())],
            workloads=[codec.workload_to_pb(w) for _, w in sorted(self.workloads.items())],
            pods=[codec.pod_to_pb(p) for _, p in sorted(self.pods.items())],
            meshed_pods=[codec.meshed_pod_to_pb(m) for _, m in sorted(self.meshed_pods.items())],
            authz_policies=[
                authz_codec.policy_to_pb(p)
                for _, p in sorted(self.authz.policies.items(), key=lambda kv: str(kv[0]))
            ],
            routes=[route_codec.route_to_pb(r) for _, r in sorted(self.routes.routes.items())],
            last=True,
        )

    def _put_pod(self, info: PodInfo) -> bool:
        if info.node and info.node != self.node:
            # A pod that moved away (or a control plane bug): it is not ours to enrol.
            return self.pods.pop(info.key, None) is not None
        self.pods[info.key] = info
        return True

    def _put_service(self, service: Service) -> None:
        self.services[service.key] = service
        for ip in service.cluster_ips:
            self._by_ip[ip] = service.key

    def _drop_service(self, key: ServiceKey) -> None:
        old = self.services.pop(key, None)
        if old is not None:
            for ip in old.cluster_ips:
                if self._by_ip.get(ip) == key:
                    del self._by_ip[ip]
