"""Resource kinds the public API and tap accept (deploy, pod, ns, svc, node), and their pods."""

from __future__ import annotations

from controlplane.index import ClusterIndex
from nodemesh import kinds
from nodemesh.model import PodInfo, PodKey, ServiceKey


class BadResource(ValueError):
    """A resource the API cannot serve; the message is meant for the user."""


def canonical_kind(kind: str) -> str:
    try:
        return kinds.canonical(kind)
    except kinds.UnknownKind as exc:
        raise BadResource(str(exc)) from None


def pods_of(index: ClusterIndex, kind: str, *, namespace: str, name: str) -> list[PodInfo]:
    """Pods a resource covers. An empty `name` means every resource of the kind in `namespace`
    (every namespace when `namespace` is empty too)."""
    kind = canonical_kind(kind)
    in_scope = [p for p in index.pods.values() if not namespace or p.key.namespace == namespace]
    if kind == "deployment":
        return [
            p
            for p in in_scope
            if p.workload.kind == "Deployment" and (not name or p.workload.name == name)
        ]
    if kind == "pod":
        if name:
            pod = index.pods.get(PodKey(namespace, name))
            return [pod] if pod else []
        return in_scope
    if kind == "namespace":
        return [p for p in index.pods.values() if not name or p.key.namespace == name]
    if kind == "node":
        return index.pods_on_node(name) if name else list(index.pods.values())
    # service: the pods behind its endpoints
    keys = (
        [ServiceKey(namespace, name)]
        if name
        else [k for k in index.services if not namespace or k.namespace == namespace]
    )
    found: dict[PodKey, PodInfo] = {}
    for key in keys:
        svc = index.services.get(key)
        for ep in svc.endpoints if svc else ():
            if ep.pod is not None and ep.pod in index.pods:
                found[ep.pod] = index.pods[ep.pod]
    return list(found.values())


def addresses_of(index: ClusterIndex, kind: str, *, namespace: str, name: str) -> list[str]:
    """IPs a client would send to when it talks to the resource: pod IPs, plus VIPs of Services."""
    ips = {p.ip for p in pods_of(index, kind, namespace=namespace, name=name) if p.ip}
    if canonical_kind(kind) == "service":
        for key, svc in index.services.items():
            if (not namespace or key.namespace == namespace) and (not name or key.name == name):
                ips.update(svc.cluster_ips)
    return sorted(ips)
