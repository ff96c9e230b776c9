"""What a cluster holds on the adoption path: ingress controllers, routers and who uses them,
meshed namespaces and their inbound modes. Pure: Kubernetes-shaped dicts in, dataclasses out."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

MESH_LABEL = "nodemesh.io/mesh"
INBOUND_MODE = "nodemesh.io/inbound-mode"
SKIP_INBOUND = "nodemesh.io/skip-inbound-ports"
ROUTER_ROUTES = "nodemesh.io/router-routes"
# A router-compatible Service (the node agents route what is sent to it by Host or proxy
# target; controlplane.index.mesh.ROUTER).
ROUTER_SERVICE = "nodemesh.io/router"

WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")
# Namespaces the path never touches: the cluster's own and the mesh's.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "nodemesh"})

# Images of ingress controllers people run (ingress-nginx, NGINX Inc.'s, Traefik, HAProxy's two,
# Kong, Contour): matched on the image's repository path.
INGRESS_IMAGES = re.compile(
    r"(ingress-nginx|nginx-ingress|/traefik|^traefik|haproxy-ingress|kubernetes-ingress"
    r"|kong|contour)",
    re.I,
)
# Images a router layer is built from (a proxy every other service sends through).
ROUTER_IMAGES = re.compile(r"(haproxy|nginx|envoy|linkerd|l5d|traefik)", re.I)
# Environment variables that send an app's HTTP (and gRPC) through a proxy.
PROXY_ENV = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "grpc_proxy")
HOST_PORT = re.compile(r"^(?:[a-z]+://)?(?P<host>[A-Za-z0-9_$().-]+):(?P<port>\d{1,5})/?$")
NODE_NAME_REF = "$(NODE_NAME)"
# nodemesh's own router: every node agent's explicit proxy port (router mode, nodemesh.ports).
NODEMESH_ROUTER_PORT = 4144
NODEMESH_ROUTER = f"nodemesh:{NODEMESH_ROUTER_PORT}"
# Downward-API fields that name the pod's node: $(VAR) of an env set from one is the node.
NODE_FIELDS = frozenset({"spec.nodeName", "status.hostIP"})


class SurveyError(ValueError):
    """An object that cannot be read the way the path needs it; says which and why."""


@dataclass(frozen=True, order=True)
class WorkloadRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.name} -n {self.namespace}"


@dataclass(frozen=True)
class RouterUse:
    """One environment variable of a workload that sends through a router."""

    workload: WorkloadRef
    container: str
    env: str
    value: str
    router: str  # "ns/service" or "per-node:PORT"
    proxy_env: bool  # http_proxy & co. (else a HOST:PORT naming the router's Service)


@dataclass(frozen=True)
class Router:
    name: str  # "ns/service", or "per-node:PORT" for Linkerd 1's http_proxy=$(NODE_NAME):PORT
    workloads: tuple[WorkloadRef, ...]  # what serves it
    service: str | None  # "ns/name" of its Service, if any
    routes: dict[int, str]  # router port -> "host:port" it forwards to (ROUTER_ROUTES)
    # nodemesh's own router mode (the agents' port 4144): already in the mesh, never removed.
    nodemesh: bool = False


@dataclass
class NamespaceState:
    name: str
    meshed: bool
    inbound_mode: str  # permissive or strict, as the namespace's annotation says
    ingress_controllers: list[WorkloadRef] = field(default_factory=list)
    routers: list[str] = field(default_factory=list)
    router_users: list[WorkloadRef] = field(default_factory=list)
    workloads: list[WorkloadRef] = field(default_factory=list)
    # Workloads whose pods opt out of the mesh (pod label nodemesh.io/mesh=disabled): never
    # restarted by a step, since restarting would not mesh them.
    opted_out: list[WorkloadRef] = field(default_factory=list)
    ingresses: int = 0

    @property
    def to_restart(self) -> list[WorkloadRef]:
        return [w for w in self.workloads if w not in self.opted_out]

    @property
    def stage(self) -> str:
        """Where the namespace is on the path, in words."""
        if not self.meshed:
            return "router" if self.router_users else "unmeshed"
        if self.router_users:
            return "meshed, still using a router"
        return f"meshed ({self.inbound_mode})"


@dataclass
class Survey:
    namespaces: dict[str, NamespaceState]
    routers: dict[str, Router]
    uses: list[RouterUse]
    objects: dict[tuple[str, str, str], dict[str, Any]]  # (kind, ns, name) -> object

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    @property
    def ingress_controllers(self) -> list[WorkloadRef]:
        return sorted(w for ns in self.namespaces.values() for w in ns.ingress_controllers)


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = ((workload.get("spec") or {}).get("template") or {}).get("spec") or {}
    return list(spec.get("containers") or [])


def template_meta(workload: dict[str, Any]) -> dict[str, Any]:
    return ((workload.get("spec") or {}).get("template") or {}).get("metadata") or {}


def is_ingress_controller(workload: dict[str, Any]) -> bool:
    return any(INGRESS_IMAGES.search(c.get("image") or "") for c in containers(workload))


def is_router_image(workload: dict[str, Any]) -> bool:
    return any(ROUTER_IMAGES.search(c.get("image") or "") for c in containers(workload))


def parse_routes(text: str, *, where: str) -> dict[int, str]:
    """`8081=emoji-svc.emojivoto:8080, 8082=voting-svc.emojivoto:8080`."""
    routes: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        port, sep, dest = part.partition("=")
        m = HOST_PORT.match(dest.strip())
        if not sep or not port.strip().isdigit() or not m:
            raise SurveyError(
                f"{where}: annotation {ROUTER_ROUTES}: {part!r} is not PORT=HOST:PORT"
            )
        routes[int(port)] = dest.strip()
    return routes


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _service_names(svc: dict[str, Any]) -> set[str]:
    name, ns = svc["metadata"]["name"], svc["metadata"].get("namespace") or "default"
    return {f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"}


def _env(container: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for e in container.get("env") or []:
        if isinstance(e.get("value"), str):
            yield e["name"], e["value"]


def _node_refs(container: dict[str, Any]) -> set[str]:
    """`$(VAR)` for each env VAR of the container set from the pod's node name or host IP."""
    refs = {NODE_NAME_REF}
    for e in container.get("env") or []:
        field_ref = ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if field_ref in NODE_FIELDS:
            refs.add(f"$({e['name']})")
    return refs


def _node_addresses(by_key: dict[tuple[str, str, str], dict[str, Any]]) -> set[str]:
    """The nodes' addresses, from the Node objects."""
    found: set[str] = set()
    for (kind, _, _), obj in by_key.items():
        if kind == "Node":
            for a in (obj.get("status") or {}).get("addresses") or []:
                if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address"):
                    found.add(a["address"])
    return found


def survey(objects: Iterable[dict[str, Any]]) -> Survey:
    by_key: dict[tuple[str, str, str], dict[str, Any]] = {}
    for obj in objects:
        kind = obj.get("kind", "")
        meta = obj.get("metadata") or {}
        ns = "" if kind == "Namespace" else meta.get("namespace") or "default"
        by_key[(kind, ns, meta.get("name", ""))] = obj
    namespaces: dict[str, NamespaceState] = {}
    for (kind, _, name), obj in sorted(by_key.items()):
        if kind == "Namespace" and name not in SYSTEM_NAMESPACES:
            meta = obj.get("metadata") or {}
            mode = (meta.get("annotations") or {}).get(INBOUND_MODE, "permissive")
            namespaces[name] = NamespaceState(
                name=name,
                meshed=(meta.get("labels") or {}).get(MESH_LABEL) == "enabled",
                inbound_mode=mode,
            )
    workloads = {
        WorkloadRef(k, ns, n): o for (k, ns, n), o in by_key.items() if k in WORKLOAD_KINDS
    }
    for ref, obj in sorted(workloads.items()):
        state = namespaces.get(ref.namespace)
        if state is None:
            continue
        state.workloads.append(ref)
        if (template_meta(obj).get("labels") or {}).get(MESH_LABEL) == "disabled":
            state.opted_out.append(ref)
        if is_ingress_controller(obj):
            state.ingress_controllers.append(ref)
    for (kind, ns, _), _obj in by_key.items():
        if kind == "Ingress" and ns in namespaces:
            namespaces[ns].ingresses += 1

    # Services by every name a pod may use for them, and what backs each.
    services: dict[str, tuple[str, dict[str, Any]]] = {}
    for (kind, ns, name), svc in by_key.items():
        if kind != "Service":
            continue
        key = f"{ns}/{name}"
        for n in _service_names(svc):
            services[n] = (key, svc)

    def backing(svc: dict[str, Any]) -> tuple[WorkloadRef, ...]:
        ns = svc["metadata"].get("namespace") or "default"
        selector = (svc.get("spec") or {}).get("selector") or {}
        return tuple(
            sorted(
                ref
                for ref, w in workloads.items()
                if ref.namespace == ns and _selects(selector, template_meta(w).get("labels") or {})
            )
        )

    routers: dict[str, Router] = {}
    uses: list[RouterUse] = []

    def router_for_service(host: str, own_ns: str) -> Router | None:
        found = services.get(host) or services.get(f"{host}.{own_ns}")
        if found is None:
            return None
        key, svc = found
        if key in routers:
            return routers[key]
        behind = backing(svc)
        if not behind or not any(
            is_router_image(workloads[w]) and not is_ingress_controller(workloads[w])
            for w in behind
        ):
            return None
        annotations = (svc.get("metadata") or {}).get("annotations") or {}
        routes = parse_routes(annotations.get(ROUTER_ROUTES, ""), where=f"Service {key}")
        routers[key] = Router(name=key, workloads=behind, service=key, routes=routes)
        return routers[key]

    def per_node_router(port: int) -> Router:
        key = f"per-node:{port}"
        if key not in routers:
            behind = tuple(
                sorted(
                    ref
                    for ref, w in workloads.items()
                    if ref.kind == "DaemonSet"
                    and any(
                        p.get("hostPort") == port
                        for c in containers(w)
                        for p in c.get("ports") or []
                    )
                )
            )
            routers[key] = Router(name=key, workloads=behind, service=None, routes={})
        return routers[key]

    node_addresses = _node_addresses(by_key)
    for ref, obj in sorted(workloads.items()):
        if ref.namespace not in namespaces:
            continue
        for c in containers(obj):
            node_refs = _node_refs(c)
            for env, value in _env(c):
                m = HOST_PORT.match(value.strip())
                if not m:
                    continue
                host, port = m["host"], int(m["port"])
                router: Router | None
                on_node = host in node_refs or host in node_addresses
                if env in PROXY_ENV and on_node and port == NODEMESH_ROUTER_PORT:
                    router = routers.setdefault(
                        NODEMESH_ROUTER,
                        Router(NODEMESH_ROUTER, (), service=None, routes={}, nodemesh=True),
                    )
                elif env in PROXY_ENV and host == NODE_NAME_REF:
                    router = per_node_router(port)
                else:
                    router = router_for_service(host, ref.namespace)
                if router is None or ref in router.workloads:
                    continue
                uses.append(
                    RouterUse(
                        workload=ref,
                        container=c.get("name", ""),
                        env=env,
                        value=value,
                        router=router.name,
                        proxy_env=env in PROXY_ENV,
                    )
                )
    # Routers nothing names any more (apps moved off), known by their routes annotation or, for
    # Linkerd 1, by its image and node port.
    for (kind, ns, name), svc in by_key.items():
        annotations = (svc.get("metadata") or {}).get("annotations") or {}
        if kind == "Service" and ROUTER_ROUTES in annotations:
            router_for_service(f"{name}.{ns}", ns)
    for ref, obj in workloads.items():
        if ref.kind == "DaemonSet" and any(
            re.search(r"linkerd|l5d", c.get("image") or "", re.I) for c in containers(obj)
        ):
            for c in containers(obj):
                for p in c.get("ports") or []:
                    if p.get("hostPort"):
                        per_node_router(int(p["hostPort"]))
    for router in routers.values():
        for w in router.workloads:
            if router.name not in namespaces[w.namespace].routers:
                namespaces[w.namespace].routers.append(router.name)
    for use in uses:
        users = namespaces[use.workload.namespace].router_users
        if use.workload not in users:
            users.append(use.workload)
    return Survey(namespaces=namespaces, routers=routers, uses=uses, objects=by_key)
