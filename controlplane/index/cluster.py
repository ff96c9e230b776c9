"""ClusterIndex: raw objects in; derived pods, workloads, services and the changes out."""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from controlplane.index import derive, mesh
from controlplane.index.changes import (
    Change,
    NodeRemoved,
    NodeUpdated,
    PodRemoved,
    PodUpdated,
    PolicyRemoved,
    PolicyUpdated,
    RouteRemoved,
    RouteUpdated,
    ServiceRemoved,
    ServiceUpdated,
    WorkloadRemoved,
    WorkloadUpdated,
)
from controlplane.metrics import INDEX_BAD_SETTINGS, INDEX_OBJECTS, INDEX_SKIPPED, SOURCE_SYNCED
from controlplane.sources.events import (
    KINDS,
    EventType,
    KindStale,
    KindSynced,
    ObjectChanged,
    SourceEvent,
)
from nodemesh import authz
from nodemesh.model import NodeInfo, PodInfo, PodKey, Service, ServiceKey, Workload, WorkloadRef
from nodemesh.routing.model import Route, RouteKey
from nodemesh.routing.spec import ROUTE_KINDS, RouteError, compile_route

log = logging.getLogger(__name__)
Obj = dict[str, Any]
NsName = tuple[str, str]


class ClusterIndex:
    """Apply source events with `apply`; read the derived tables; changes come back from `apply`."""

    def __init__(self, *, trust_domain: str = "cluster.local") -> None:
        self.trust_domain = trust_domain
        self.revision = 0
        # Objects applied, whether or not they changed what the agents are sent (`revision`):
        # anything read from the index may have changed when this did.
        self.applied = 0
        self.bad_objects = 0
        self._synced: set[str] = set()
        self._stale: dict[str, float] = {}  # kind -> Unix time since when it is not followed
        for kind in KINDS:
            SOURCE_SYNCED.labels(kind).set(0)
        self._raw: dict[str, dict[NsName, Obj]] = {k: {} for k in KINDS}
        self.pods: dict[PodKey, PodInfo] = {}
        self.services: dict[ServiceKey, Service] = {}
        self.workloads: dict[WorkloadRef, Workload] = {}
        self.nodes: dict[str, NodeInfo] = {}
        self.policies: dict[authz.PolicyKey, authz.Spec] = {}  # InboundPolicy specs, read
        # Mesh routes with at least one Service parent; invalid ones are left out (logged).
        self.routes: dict[RouteKey, Route] = {}
        self.route_errors: dict[RouteKey, str] = {}
        # Reverse maps that say what to recompute when something changes.
        self._pods_by_ns: dict[str, set[PodKey]] = defaultdict(set)
        self._pods_by_rs: dict[NsName, set[PodKey]] = defaultdict(set)
        self._pods_by_workload: dict[WorkloadRef, set[PodKey]] = defaultdict(set)
        self._pods_by_node: dict[str, set[PodKey]] = defaultdict(set)
        self._pod_by_ip: dict[str, PodKey] = {}
        self._slices_by_service: dict[ServiceKey, set[NsName]] = defaultdict(set)
        self._services_by_pod: dict[PodKey, set[ServiceKey]] = defaultdict(set)
        self._services_by_ip: dict[str, set[ServiceKey]] = defaultdict(set)
        self._service_deps: dict[ServiceKey, tuple[set[PodKey], set[str]]] = {}

    # -- reading -------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """Every kind was listed and none is currently out of the source's sight."""
        return self._synced.issuperset(KINDS) and not self._stale

    def unsynced(self) -> dict[str, float | None]:
        """Kinds that are not in sync: never listed (None) or stale since a Unix time."""
        out: dict[str, float | None] = dict(self._stale)
        out.update({k: None for k in KINDS if k not in self._synced})
        return out

    def pods_on_node(self, node: str) -> list[PodInfo]:
        return [self.pods[k] for k in sorted(self._pods_by_node.get(node, ()))]

    def pods_in_namespace(self, namespace: str) -> list[PodInfo]:
        keys = sorted(self._pods_by_ns.get(namespace, ()))
        return [p for k in keys if (p := self.pods.get(k)) is not None]

    def pods_of_workload(self, ref: WorkloadRef) -> list[PodInfo]:
        return [self.pods[k] for k in sorted(self._pods_by_workload.get(ref, ()))]

    def pod_by_ip(self, ip: str) -> PodInfo | None:
        key = self._pod_by_ip.get(ip)
        return self.pods.get(key) if key else None

    def namespaces(self) -> dict[str, bool]:
        """Namespace name -> meshed."""
        return {
            name: mesh.namespace_meshed(derive.d(derive.meta(obj).get("labels")))
            for (_, name), obj in self._raw["Namespace"].items()
        }

    def raw(self, kind: str) -> dict[NsName, Obj]:
        return self._raw[kind]

    # -- applying ------------------------------------------------------------------------

    def apply(self, event: SourceEvent) -> list[Change]:
        if isinstance(event, KindSynced):
            self._synced.add(event.kind)
            self._stale.pop(event.kind, None)
            SOURCE_SYNCED.labels(event.kind).set(1)
            return []
        if isinstance(event, KindStale):
            self._stale[event.kind] = event.down_since
            SOURCE_SYNCED.labels(event.kind).set(0)
            return []
        if event.kind not in self._raw:
            return []
        self.applied += 1
        if event.kind == authz.KIND:
            changes = self._apply_policy(event)
            INDEX_OBJECTS.labels(event.kind).set(len(self.policies))
            if changes:
                self.revision += 1
            return changes
        dirty = _Dirty()
        self._store(event, dirty)
        changes = self._recompute(dirty)
        INDEX_OBJECTS.labels(event.kind).set(len(self._raw[event.kind]))
        if changes:
            self.revision += 1
        return changes

    def _apply_policy(self, event: ObjectChanged) -> list[Change]:
        meta = derive.meta(event.obj)
        ns, name = derive.s(meta.get("namespace")), derive.s(meta.get("name"))
        key = authz.PolicyKey(ns, name)
        table = self._raw[authz.KIND]
        spec = None
        if event.type is EventType.DELETED:
            table.pop((ns, name), None)
        else:
            table[(ns, name)] = event.obj
            try:
                spec = authz.read_spec(event.obj)
            except authz.SpecError as exc:
                # Withdrawing it would open what it closed: its last readable version stays.
                self.bad_objects += 1
                INDEX_SKIPPED.labels(authz.KIND).inc()
                log.warning("%s %s: %s (its last readable version stays)", authz.KIND, key, exc)
                return []
        old = self.policies.get(key)
        if spec is None:
            if old is None:
                return []
            del self.policies[key]
            return [PolicyRemoved(key)]
        if old == spec:
            return []
        self.policies[key] = spec
        return [PolicyUpdated(key, spec)]

    def _store(self, event: ObjectChanged, dirty: _Dirty) -> None:
        kind, obj = event.kind, event.obj
        meta = derive.meta(obj)
        key = (derive.s(meta.get("namespace")), derive.s(meta.get("name")))
        table = self._raw[kind]
        old = table.get(key)
        if event.type is EventType.DELETED:
            table.pop(key, None)
            new = None
        else:
            table[key] = new = obj
        if kind == "Pod":
            pk = PodKey(*key)
            if old is not None and (rs := _replicaset_of(old)) is not None:
                self._pods_by_rs[(key[0], rs)].discard(pk)
            if new is not None:
                self._pods_by_ns[key[0]].add(pk)
                if (rs := _replicaset_of(new)) is not None:
                    self._pods_by_rs[(key[0], rs)].add(pk)
            else:
                self._pods_by_ns[key[0]].discard(pk)
            dirty.pods.add(pk)
        elif kind == "Namespace":
            dirty.pods.update(self._pods_by_ns.get(key[1], ()))
        elif kind == "ReplicaSet":
            dirty.pods.update(self._pods_by_rs.get(key, ()))
        elif kind == "Deployment":
            dirty.workloads.add(WorkloadRef("Deployment", *key))
        elif kind == "Service":
            dirty.services.add(ServiceKey(*key))
        elif kind == "EndpointSlice":
            for o in (old, new):
                svc = derive.slice_service(o) if o is not None else None
                if svc is not None:
                    self._slices_by_service[svc].discard(key)
                    dirty.services.add(svc)
            svc = derive.slice_service(new) if new is not None else None
            if svc is not None:
                self._slices_by_service[svc].add(key)
        elif kind == "Node":
            dirty.nodes.add(key[1])
        elif kind in ROUTE_KINDS:
            dirty.routes.add(RouteKey(kind, *key))

    def _recompute(self, dirty: _Dirty) -> list[Change]:
        changes: list[Change] = []
        for pk in sorted(dirty.pods):
            self._recompute_pod(pk, dirty, changes)
        for ref in sorted(dirty.workloads):
            self._recompute_workload(ref, changes)
        for sk in sorted(dirty.services):
            self._recompute_service(sk, changes)
        for name in sorted(dirty.nodes):
            obj = self._raw["Node"].get(("", name))
            info = self._safely("Node", name, lambda o=obj: derive.node_info(o)) if obj else None
            if info is None:
                if self.nodes.pop(name, None) is not None:
                    changes.append(NodeRemoved(name))
            elif self.nodes.get(name) != info:
                self.nodes[name] = info
                changes.append(NodeUpdated(info))
        for rk in sorted(dirty.routes):
            self._recompute_route(rk, changes)
        return changes

    def _recompute_route(self, rk: RouteKey, changes: list[Change]) -> None:
        obj = self._raw[rk.kind].get((rk.namespace, rk.name))
        new: Route | None = None
        self.route_errors.pop(rk, None)
        if obj is not None:
            try:
                new = compile_route(obj)
            except RouteError as exc:
                self.bad_objects += 1
                INDEX_SKIPPED.labels(rk.kind).inc()
                self.route_errors[rk] = str(exc)
                log.warning("skipping %s: %s", rk, exc)
            if new is not None and not new.parents:
                new = None  # attached to Gateways only: not a mesh route
        old = self.routes.get(rk)
        if new == old:
            return
        if new is None:
            del self.routes[rk]
            changes.append(RouteRemoved(rk))
        else:
            self.routes[rk] = new
            changes.append(RouteUpdated(new))

    def _recompute_pod(self, pk: PodKey, dirty: _Dirty, changes: list[Change]) -> None:
        obj = self._raw["Pod"].get((pk.namespace, pk.name))
        new = None
        if obj is not None:
            new = self._safely("Pod", str(pk), lambda: self._derive_pod(obj))
        old = self.pods.get(pk)
        if new == old:
            return
        if old is not None:
            self._pods_by_workload[old.workload].discard(pk)
            self._pods_by_node[old.node].discard(pk)
            if self._pod_by_ip.get(old.ip) == pk:
                del self._pod_by_ip[old.ip]
            dirty.workloads.add(old.workload)
            dirty.services.update(self._services_by_ip.get(old.ip, ()))
        if new is None:
            del self.pods[pk]
            changes.append(PodRemoved(pk, old.node if old else ""))
        else:
            self.pods[pk] = new
            self._pods_by_workload[new.workload].add(pk)
            self._pods_by_node[new.node].add(pk)
            if new.ip and not new.host_network and new.phase not in ("Succeeded", "Failed"):
                self._pod_by_ip[new.ip] = pk
            dirty.workloads.add(new.workload)
            dirty.services.update(self._services_by_ip.get(new.ip, ()))
            if old is not None and old.node != new.node:
                changes.append(PodRemoved(pk, old.node))
            if new.mesh.errors and (old is None or old.mesh.errors != new.mesh.errors):
                INDEX_BAD_SETTINGS.inc(len(new.mesh.errors))
                log.warning("pod %s: %s", pk, "; ".join(new.mesh.errors))
            changes.append(PodUpdated(new))
        dirty.services.update(self._services_by_pod.get(pk, ()))

    def _derive_pod(self, obj: Obj) -> PodInfo:
        ns = derive.s(derive.meta(obj).get("namespace"))
        workload = derive.workload_of(obj, lambda n, name: self._raw["ReplicaSet"].get((n, name)))
        return derive.pod_info(
            obj,
            namespace=self._raw["Namespace"].get(("", ns)),
            workload=workload,
            trust_domain=self.trust_domain,
        )

    def _recompute_workload(self, ref: WorkloadRef, changes: list[Change]) -> None:
        identities = {p.identity for p in self.pods_of_workload(ref)}
        exists = bool(identities)
        if ref.kind == "Deployment":
            dep = self._raw["Deployment"].get((ref.namespace, ref.name))
            if dep is not None:
                exists = True
                identities.add(derive.template_identity(dep, self.trust_domain))
        new = Workload(ref, tuple(sorted(identities))) if exists else None
        old = self.workloads.get(ref)
        if new == old:
            return
        if new is None:
            del self.workloads[ref]
            self._pods_by_workload.pop(ref, None)
            changes.append(WorkloadRemoved(ref))
        else:
            self.workloads[ref] = new
            changes.append(WorkloadUpdated(new))

    def _recompute_service(self, sk: ServiceKey, changes: list[Change]) -> None:
        obj = self._raw["Service"].get((sk.namespace, sk.name))
        result = None
        if obj is not None:
            slices = [
                self._raw["EndpointSlice"][k]
                for k in sorted(self._slices_by_service.get(sk, ()))
                if k in self._raw["EndpointSlice"]
            ]
            result = self._safely(
                "Service",
                str(sk),
                lambda: derive.service(obj, slices=slices, pod_for=self._pod_for),
            )
        new, pods, ips = result if result is not None else (None, set(), set())
        old_pods, old_ips = self._service_deps.pop(sk, (set(), set()))
        for p in old_pods:
            self._services_by_pod[p].discard(sk)
        for ip in old_ips:
            self._services_by_ip[ip].discard(sk)
        if new is not None:
            self._service_deps[sk] = (pods, ips)
            for p in pods:
                self._services_by_pod[p].add(sk)
            for ip in ips:
                self._services_by_ip[ip].add(sk)
        old = self.services.get(sk)
        if new == old:
            return
        if new is None:
            del self.services[sk]
            changes.append(ServiceRemoved(sk))
        else:
            self.services[sk] = new
            changes.append(ServiceUpdated(new))

    def _pod_for(self, namespace: str, name: str, ip: str) -> PodInfo | None:
        if name:
            return self.pods.get(PodKey(namespace, name))
        return self.pod_by_ip(ip)

    def _safely(self, kind: str, name: str, fn: Any) -> Any:
        """A malformed object must not take the index down: skip it with a logged reason."""
        try:
            return fn()
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            self.bad_objects += 1
            INDEX_SKIPPED.labels(kind).inc()
            log.warning("skipping %s %s: %s", kind, name, exc)
            return None


def _replicaset_of(pod: Obj) -> str | None:
    owner = derive.controller_of(pod)
    return owner[1] if owner is not None and owner[0] == "ReplicaSet" else None


class _Dirty:
    __slots__ = ("pods", "workloads", "services", "nodes", "routes")

    def __init__(self) -> None:
        self.pods: set[PodKey] = set()
        self.workloads: set[WorkloadRef] = set()
        self.services: set[ServiceKey] = set()
        self.nodes: set[str] = set()
        self.routes: set[RouteKey] = set()
