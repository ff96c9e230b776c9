"""Pure functions from Kubernetes-shaped dicts to the mesh's model (tolerant of missing fields)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from controlplane.index import mesh
from nodemesh.identity import spiffe_id
from nodemesh.model import (
    Endpoint,
    EndpointPort,
    NodeInfo,
    PodInfo,
    PodKey,
    PortSet,
    Service,
    ServiceKey,
    ServicePort,
    WorkloadRef,
)

Obj = dict[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def lst(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def s(value: Any) -> str:
    return value if isinstance(value, str) else ""


def meta(obj: Obj) -> dict[str, Any]:
    return d(obj.get("metadata"))


def controller_of(obj: Obj) -> tuple[str, str] | None:
    """(kind, name) of the owner with controller: true, else of the only owner, else None."""
    owners = [d(o) for o in lst(meta(obj).get("ownerReferences"))]
    chosen = next((o for o in owners if o.get("controller") is True), None)
    if chosen is None and len(owners) == 1:
        chosen = owners[0]
    if chosen is None or not s(chosen.get("kind")) or not s(chosen.get("name")):
        return None
    return s(chosen["kind"]), s(chosen["name"])


def workload_of(pod: Obj, replicaset: Callable[[str, str], Obj | None]) -> WorkloadRef:
    """Deployment through the ReplicaSet's owner; StatefulSet, DaemonSet, etc. as themselves."""
    m = meta(pod)
    ns, name = s(m.get("namespace")), s(m.get("name"))
    owner = controller_of(pod)
    if owner is None:
        return WorkloadRef("Pod", ns, name)
    kind, owner_name = owner
    if kind == "ReplicaSet":
        rs = replicaset(ns, owner_name)
        top = controller_of(rs) if rs is not None else None
        if top is not None and top[0] == "Deployment":
            return WorkloadRef("Deployment", ns, top[1])
    return WorkloadRef(kind, ns, owner_name)


def pod_ready(status: dict[str, Any]) -> bool:
    for cond in lst(status.get("conditions")):
        cond = d(cond)
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def service_account(spec: dict[str, Any]) -> str:
    return s(spec.get("serviceAccountName")) or s(spec.get("serviceAccount")) or "default"


def pod_info(
    pod: Obj, *, namespace: Obj | None, workload: WorkloadRef, trust_domain: str
) -> PodInfo:
    m, spec, status = meta(pod), d(pod.get("spec")), d(pod.get("status"))
    ns_meta = meta(namespace) if namespace else {}
    host_network = spec.get("hostNetwork") is True
    key = PodKey(s(m.get("namespace")), s(m.get("name")))
    sa = service_account(spec)
    return PodInfo(
        key=key,
        uid=s(m.get("uid")),
        node=s(spec.get("nodeName")),
        ip=s(status.get("podIP")),
        host_ip=s(status.get("hostIP")),
        phase=s(status.get("phase")),
        ready=pod_ready(status),
        service_account=sa,
        identity=spiffe_id(trust_domain, key.namespace, sa),
        workload=workload,
        mesh=mesh.resolve(
            ns_labels=d(ns_meta.get("labels")),
            ns_annotations=d(ns_meta.get("annotations")),
            pod_labels=d(m.get("labels")),
            pod_annotations=d(m.get("annotations")),
            host_network=host_network,
        ),
        host_network=host_network,
        labels={str(k): str(v) for k, v in d(m.get("labels")).items()},
        terminating=bool(m.get("deletionTimestamp")),
    )


def template_identity(deployment: Obj, trust_domain: str) -> str:
    spec = d(d(d(deployment.get("spec")).get("template")).get("spec"))
    return spiffe_id(trust_domain, s(meta(deployment).get("namespace")), service_account(spec))


def node_info(node: Obj) -> NodeInfo:
    status = d(node.get("status"))
    internal = next(
        (
            s(d(a).get("address"))
            for a in lst(status.get("addresses"))
            if d(a).get("type") == "InternalIP"
        ),
        "",
    )
    return NodeInfo(
        name=s(meta(node).get("name")),
        internal_ip=internal,
        pod_cidr=s(d(node.get("spec")).get("podCIDR")),
        ready=pod_ready(status),
    )


def slice_service(slice_obj: Obj) -> ServiceKey | None:
    m = meta(slice_obj)
    name = s(d(m.get("labels")).get(SERVICE_NAME_LABEL))
    return ServiceKey(s(m.get("namespace")), name) if name else None


def service(
    svc: Obj, *, slices: Iterable[Obj], pod_for: Callable[[str, str, str], PodInfo | None]
) -> tuple[Service, set[PodKey], set[str]]:
    """The Service with its endpoints; also the pods and IPs it depends on (for invalidation).

    `pod_for(namespace, pod_name, ip)` finds the pod behind an endpoint by targetRef or IP."""
    m, spec = meta(svc), d(svc.get("spec"))
    key = ServiceKey(s(m.get("namespace")), s(m.get("name")))
    ips = [s(ip) for ip in lst(spec.get("clusterIPs"))] or [s(spec.get("clusterIP"))]
    ports = tuple(
        ServicePort(
            name=s(p.get("name")),
            port=int(p.get("port", 0)),
            target_port=p.get("targetPort") or int(p.get("port", 0)),
            protocol=s(p.get("protocol")) or "TCP",
        )
        for p in map(d, lst(spec.get("ports")))
    )
    opaque = PortSet()
    raw_opaque = d(m.get("annotations")).get(mesh.OPAQUE_PORTS)
    if raw_opaque is not None:
        opaque = PortSet.parse(str(raw_opaque))  # a bad value fails the Service: reported upstream
    endpoints: dict[tuple[str, tuple[EndpointPort, ...]], Endpoint] = {}
    pods: set[PodKey] = set()
    addresses: set[str] = set()
    for sl in slices:
        if s(sl.get("addressType")) not in ("IPv4", "IPv6", ""):
            continue
        eports = tuple(
            sorted(
                EndpointPort(s(p.get("name")), int(p.get("port", 0)), s(p.get("protocol")) or "TCP")
                for p in map(d, lst(sl.get("ports")))
            )
        )
        for ep in map(d, lst(sl.get("endpoints"))):
            cond = d(ep.get("conditions"))
            ref = d(ep.get("targetRef"))
            ref_ns = s(ref.get("namespace")) or key.namespace
            ref_name = s(ref.get("name")) if ref.get("kind") == "Pod" else ""
            for ip in map(s, lst(ep.get("addresses"))):
                if not ip:
                    continue
                addresses.add(ip)
                pod = pod_for(ref_ns, ref_name, ip)
                if ref_name:
                    pods.add(PodKey(ref_ns, ref_name))
                meshed = pod is not None and pod.mesh.meshed
                endpoints[(ip, eports)] = Endpoint(
                    ip=ip,
                    ports=eports,
                    # The API defines a missing `ready` as "unknown, treat as ready".
                    ready=cond.get("ready") is not False,
                    terminating=cond.get("terminating") is True,
                    node=s(ep.get("nodeName")) or (pod.node if pod else ""),
                    pod=pod.key if pod else None,
                    workload=pod.workload if pod else None,
                    identity=pod.identity if meshed and pod else "",
                    meshed=meshed,
                    opaque_ports=pod.mesh.opaque_ports if pod else PortSet(),
                )
    result = Service(
        key=key,
        cluster_ips=tuple(ip for ip in ips if ip and ip != "None"),
        ports=ports,
        endpoints=tuple(endpoints[k] for k in sorted(endpoints)),
        opaque_ports=opaque,
        router=s(d(m.get("annotations")).get(mesh.ROUTER)).strip().lower() == "true",
    )
    return result, pods, addresses
