"""From a pod's mesh settings (control plane) to the redirect settings its nat plan is built of."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from nodeagent.rules import RedirectSettings
from nodemesh import ports
from nodemesh.model import InboundMode, PodInfo, PortSet


def _ranges(ports: PortSet) -> tuple[tuple[int, int], ...]:
    return tuple((r.first, r.last) for r in ports.ranges)


def wants_mesh(pod: PodInfo) -> bool:
    """True when the pod must be enrolled: meshed namespace, not opted out, not hostNetwork."""
    return pod.mesh.meshed and not pod.host_network


def probe_sources(pod: PodInfo, gateways: Iterable[str]) -> tuple[str, ...]:
    """Where the kubelet's probes of `pod` come from: its gateway(s) on the node side (the
    bridge's address) and the node's own IP. IPv4 only; anything unreadable is left out."""
    found = set()
    for text in (*gateways, pod.host_ip):
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            continue
        if addr.version == 4 and not addr.is_unspecified:
            found.add(str(addr))
    return tuple(sorted(found))


def redirect_settings(pod: PodInfo, *, mark: int, gateways: Iterable[str] = ()) -> RedirectSettings:
    """The rules for `pod`: the agent's mark and ports, the pod's skip annotations, where its
    probes come from, and strict mode's UDP policy."""
    return RedirectSettings(
        agent_mark=mark,
        outbound_port=ports.OUTBOUND,
        inbound_port=ports.INBOUND,
        tunnel_port=ports.TUNNEL,
        dns_port=ports.DNS,
        skip_inbound_ports=_ranges(pod.mesh.skip_inbound_ports),
        skip_outbound_ports=_ranges(pod.mesh.skip_outbound_ports),
        probe_sources=probe_sources(pod, gateways),
        drop_inbound_udp=pod.mesh.inbound_mode is InboundMode.STRICT,
        allowed_inbound_udp_ports=_ranges(pod.mesh.allow_inbound_udp_ports),
    )
