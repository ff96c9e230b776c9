"""The public API's Routes answer: which Services a resource names, their attached mesh routes
(from the index, as the agents' snapshot carries them) and per-route golden metrics."""

from __future__ import annotations

from controlplane import resources
from controlplane.index import ClusterIndex
from controlplane.telemetry_port import RouteRow, StatRow
from nodemesh.api import public_pb2 as pb
from nodemesh.model import ServiceKey
from nodemesh.routing.model import DEFAULT_ROUTE

ROUTE_KINDS = ("deployment", "service", "pod")


class UnknownResource(LookupError):
    """The index knows no such resource; the message names it."""


def services_of(index: ClusterIndex, kind: str, namespace: str, name: str) -> list[ServiceKey]:
    """The Services a resource stands for: a Service itself, or the Services whose endpoints
    are a Deployment's or a pod's (the routes attach to Services; clients call those)."""
    if kind not in ROUTE_KINDS:
        raise resources.BadResource(f"routes are shown for deploy, svc or pod, not {kind}")
    if not name:
        raise resources.BadResource(f"routes need a name: {kind}/NAME")
    if kind == "service":
        key = ServiceKey(namespace, name)
        if key not in index.services:
            raise UnknownResource(f"service {namespace}/{name} not found")
        return [key]
    if kind == "pod":
        pods = {
            p.key
            for p in index.pods.values()
            if p.key.namespace == namespace and p.key.name == name
        }
    else:
        pods = {
            p.key
            for p in index.pods.values()
            if p.key.namespace == namespace
            and p.workload.kind == "Deployment"
            and p.workload.name == name
        }
        known = any(
            ref.kind == "Deployment" and ref.namespace == namespace and ref.name == name
            for ref in index.workloads
        )
        if not pods and not known:
            raise UnknownResource(f"deployment {namespace}/{name} not found")
    if kind == "pod" and not pods:
        raise UnknownResource(f"pod {namespace}/{name} not found")
    return sorted(
        key
        for key, svc in index.services.items()
        if any(e.pod is not None and e.pod in pods for e in svc.endpoints)
    )


def attached(
    index: ClusterIndex, services: list[ServiceKey]
) -> tuple[list[pb.AttachedRoute], dict[tuple[str, str, str], str]]:
    """The routes attached to `services`, and the kind of every one of their rules by
    (service namespace, service, rule label): a rule that carried nothing in the window is
    shown with no numbers rather than left out."""
    wanted = set(services)
    out, rules = [], {}
    for rkey, route in sorted(index.routes.items()):
        for parent in route.parents:
            if parent.service not in wanted:
                continue
            out.append(
                pb.AttachedRoute(
                    kind=rkey.kind,
                    namespace=rkey.namespace,
                    name=rkey.name,
                    service_namespace=parent.service.namespace,
                    service=parent.service.name,
                    port=parent.port,
                    rules=len(route.rules),
                )
            )
            for i in range(len(route.rules)):
                label = route.rule_label(i)
                rules[(parent.service.namespace, parent.service.name, label)] = rkey.kind
    return out, rules


def route_errors(index: ClusterIndex, services: list[ServiceKey]) -> list[str]:
    """Refused routes in the Services' namespaces (a route the control plane could not read
    names no parent it can trust, so the namespace is the best guess)."""
    namespaces = {s.namespace for s in services}
    return [
        f"{rkey.kind} {rkey.namespace}/{rkey.name}: {error}"
        for rkey, error in sorted(index.route_errors.items())
        if rkey.namespace in namespaces
    ]


def route_row(r: RouteRow, *, kind: str, window: int) -> pb.RouteRow:
    covered = r.window_s or window
    row = pb.RouteRow(
        service_namespace=r.namespace,
        service=r.name,
        route=r.route,
        kind="" if r.route == DEFAULT_ROUTE else kind,
        requests=r.requests,
        rps=r.requests / covered,
        covered_seconds=covered,
    )
    golden_into(row, r)
    return row


def golden_into(row: pb.StatRow | pb.RouteRow, r: StatRow) -> None:
    """Success rate and latency quantiles of `r` into a reply row (left unset when unknown)."""
    if r.requests:
        row.success_rate = r.success / r.requests
    fields = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms")
    for field, value in zip(fields, r.latencies_ms(0.5, 0.95, 0.99), strict=True):
        if value is not None:
            setattr(row, field, value)
