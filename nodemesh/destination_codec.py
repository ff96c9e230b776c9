"""Convert the shared model to and from destination.proto messages (both directions, both ends)."""

from __future__ import annotations

from nodemesh.api import destination_pb2 as pb
from nodemesh.model import (
    Endpoint,
    EndpointPort,
    InboundMode,
    MeshedPod,
    MeshSettings,
    PodInfo,
    PodKey,
    PortRange,
    PortSet,
    Service,
    ServiceKey,
    ServicePort,
    Workload,
    WorkloadRef,
)

_MODES = {InboundMode.PERMISSIVE: pb.PERMISSIVE, InboundMode.STRICT: pb.STRICT}
_MODES_BACK = {v: k for k, v in _MODES.items()}


def ports_to_pb(ports: PortSet) -> list[pb.PortRange]:
    return [pb.PortRange(first=r.first, last=r.last) for r in ports.ranges]


def ports_from_pb(ranges: list[pb.PortRange]) -> PortSet:
    return PortSet.of([PortRange(r.first, r.last) for r in ranges])


def workload_ref_to_pb(ref: WorkloadRef) -> pb.WorkloadRef:
    return pb.WorkloadRef(kind=ref.kind, namespace=ref.namespace, name=ref.name)


def workload_ref_from_pb(ref: pb.WorkloadRef) -> WorkloadRef:
    return WorkloadRef(ref.kind, ref.namespace, ref.name)


def pod_key_to_pb(key: PodKey) -> pb.PodKey:
    return pb.PodKey(namespace=key.namespace, name=key.name)


def service_key_to_pb(key: ServiceKey) -> pb.ServiceKey:
    return pb.ServiceKey(namespace=key.namespace, name=key.name)


def mesh_to_pb(m: MeshSettings) -> pb.MeshSettings:
    return pb.MeshSettings(
        meshed=m.meshed,
        inbound_mode=_MODES[m.inbound_mode],
        opaque_ports=ports_to_pb(m.opaque_ports),
        skip_inbound_ports=ports_to_pb(m.skip_inbound_ports),
        skip_outbound_ports=ports_to_pb(m.skip_outbound_ports),
        errors=list(m.errors),
        allow_inbound_udp_ports=ports_to_pb(m.allow_inbound_udp_ports),
    )


def mesh_from_pb(m: pb.MeshSettings) -> MeshSettings:
    return MeshSettings(
        meshed=m.meshed,
        inbound_mode=_MODES_BACK.get(m.inbound_mode, InboundMode.PERMISSIVE),
        opaque_ports=ports_from_pb(list(m.opaque_ports)),
        skip_inbound_ports=ports_from_pb(list(m.skip_inbound_ports)),
        skip_outbound_ports=ports_from_pb(list(m.skip_outbound_ports)),
        errors=tuple(m.errors),
        allow_inbound_udp_ports=ports_from_pb(list(m.allow_inbound_udp_ports)),
    )


def pod_to_pb(p: PodInfo) -> pb.Pod:
    return pb.Pod(
        key=pod_key_to_pb(p.key),
        uid=p.uid,
        node=p.node,
        ip=p.ip,
        host_ip=p.host_ip,
        phase=p.phase,
        ready=p.ready,
        service_account=p.service_account,
        identity=p.identity,
        workload=workload_ref_to_pb(p.workload),
        mesh=mesh_to_pb(p.mesh),
        host_network=p.host_network,
        labels=p.labels,
    )


def pod_from_pb(p: pb.Pod) -> PodInfo:
    return PodInfo(
        key=PodKey(p.key.namespace, p.key.name),
        uid=p.uid,
        node=p.node,
        ip=p.ip,
        host_ip=p.host_ip,
        phase=p.phase,
        ready=p.ready,
        service_account=p.service_account,
        identity=p.identity,
        workload=workload_ref_from_pb(p.workload),
        mesh=mesh_from_pb(p.mesh),
        host_network=p.host_network,
        labels=dict(p.labels),
    )


def meshed_pod_to_pb(p: MeshedPod) -> pb.MeshedPod:
    return pb.MeshedPod(
        key=pod_key_to_pb(p.key),
        ip=p.ip,
        node=p.node,
        identity=p.identity,
        workload=workload_ref_to_pb(p.workload),
        inbound_mode=_MODES[p.inbound_mode],
        opaque_ports=ports_to_pb(p.opaque_ports),
    )


def meshed_pod_from_pb(p: pb.MeshedPod) -> MeshedPod:
    return MeshedPod(
        key=PodKey(p.key.namespace, p.key.name),
        ip=p.ip,
        node=p.node,
        identity=p.identity,
        workload=workload_ref_from_pb(p.workload),
        inbound_mode=_MODES_BACK.get(p.inbound_mode, InboundMode.PERMISSIVE),
        opaque_ports=ports_from_pb(list(p.opaque_ports)),
    )


def workload_to_pb(w: Workload) -> pb.Workload:
    return pb.Workload(ref=workload_ref_to_pb(w.ref), identities=list(w.identities))


def workload_from_pb(w: pb.Workload) -> Workload:
    return Workload(workload_ref_from_pb(w.ref), tuple(w.identities))


def _endpoint_to_pb(e: Endpoint) -> pb.Endpoint:
    msg = pb.Endpoint(
        ip=e.ip,
        ports=[pb.EndpointPort(name=p.name, port=p.port, protocol=p.protocol) for p in e.ports],
        ready=e.ready,
        terminating=e.terminating,
        node=e.node,
        identity=e.identity,
        meshed=e.meshed,
        opaque_ports=ports_to_pb(e.opaque_ports),
    )
    if e.pod is not None:
        msg.pod.CopyFrom(pod_key_to_pb(e.pod))
    if e.workload is not None:
        msg.workload.CopyFrom(workload_ref_to_pb(e.workload))
    return msg


def _endpoint_from_pb(e: pb.Endpoint) -> Endpoint:
    return Endpoint(
        ip=e.ip,
        ports=tuple(EndpointPort(p.name, p.port, p.protocol) for p in e.ports),
        ready=e.ready,
        terminating=e.terminating,
        node=e.node,
        pod=PodKey(e.pod.namespace, e.pod.name) if e.HasField("pod") else None,
        workload=workload_ref_from_pb(e.workload) if e.HasField("workload") else None,
        identity=e.identity,
        meshed=e.meshed,
        opaque_ports=ports_from_pb(list(e.opaque_ports)),
    )


def service_to_pb(s: Service) -> pb.Service:
    return pb.Service(
        key=service_key_to_pb(s.key),
        cluster_ips=list(s.cluster_ips),
        ports=[
            pb.ServicePort(
                name=p.name,
                port=p.port,
                target_port_number=p.target_port if isinstance(p.target_port, int) else 0,
                target_port_name=p.target_port if isinstance(p.target_port, str) else "",
                protocol=p.protocol,
            )
            for p in s.ports
        ],
        endpoints=[_endpoint_to_pb(e) for e in s.endpoints],
        opaque_ports=ports_to_pb(s.opaque_ports),
        router=s.router,
    )


def service_from_pb(s: pb.Service) -> Service:
    return Service(
        key=ServiceKey(s.key.namespace, s.key.name),
        cluster_ips=tuple(s.cluster_ips),
        ports=tuple(
            ServicePort(p.name, p.port, p.target_port_name or p.target_port_number, p.protocol)
            for p in s.ports
        ),
        endpoints=tuple(_endpoint_from_pb(e) for e in s.endpoints),
        opaque_ports=ports_from_pb(list(s.opaque_ports)),
        router=s.router,
    )
