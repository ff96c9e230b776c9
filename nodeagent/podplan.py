"""From a pod's mesh settings (control plane) to the redirect settings its nat plan is built of."""

from __future__ import annotations

from nodeagent.rules import RedirectSettings
from nodemesh.model import PodInfo, PortSet

# What the agent listens on inside every meshed pod (DESIGN.md, "Data path").
OUTBOUND_PORT = 4140
INBOUND_PORT = 4141
TUNNEL_PORT = 4143
DNS_PORT = 4153
AGENT_PORTS = frozenset({OUTBOUND_PORT, INBOUND_PORT, TUNNEL_PORT, DNS_PORT})


def _ranges(ports: PortSet) -> tuple[tuple[int, int], ...]:
    return tuple((r.first, r.last) for r in ports.ranges)


def wants_mesh(pod: PodInfo) -> bool:
    """True when the pod must be enrolled: meshed namespace, not opted out, not hostNetwork."""
    return pod.mesh.meshed and not pod.host_network


def redirect_settings(pod: PodInfo, *, mark: int) -> RedirectSettings:
    """The rules for `pod`: the agent's mark and ports plus the pod's skip annotations."""
    return RedirectSettings(
        agent_mark=mark,
        outbound_port=OUTBOUND_PORT,
        inbound_port=INBOUND_PORT,
        tunnel_port=TUNNEL_PORT,
        dns_port=DNS_PORT,
        skip_inbound_ports=_ranges(pod.mesh.skip_inbound_ports),
        skip_outbound_ports=_ranges(pod.mesh.skip_outbound_ports),
    )
