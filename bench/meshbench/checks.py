"""Evidence that a path's traffic really went through its proxies, not around them: the capture
rule's counters for the HAProxy pair, the agents' own connection counters for nodemesh."""

from __future__ import annotations

import re
import subprocess

from bench.meshbench import haproxy
from bench.meshbench.labctl import Lab

_METRICS = (
    "import urllib.request as u; print(u.urlopen('http://127.0.0.1:4191/metrics').read().decode())"
)


def redirected_connections(netns: str, *, port: int) -> int:
    """Connections the client pod's capture rule sent to haproxy-A for `port` (the nat table
    sees the first packet of each connection only)."""
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "iptables-legacy", "-w", "-t", "nat", "-L",
         haproxy.CAPTURE_CHAIN, "-v", "-x", "-n"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    for line in out.splitlines():
        if "REDIRECT" in line and f"dpt:{port} " in line + " ":
            return int(line.split()[0])
    return 0


def _metrics(lab: Lab, node: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", lab.paths.node_netns(node), "python3", "-c", _METRICS],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip


def agent_connections(lab: Lab, *, namespace: str) -> dict[str, float]:
    """node -> the agent's count of TCP connections it opened for pods of `namespace`, summed
    over its `tcp_open_total` series (both directions)."""
    found: dict[str, float] = {}
    for node in lab.agent_pids():
        text = _metrics(lab, node)
        pattern = rf'^tcp_open_total{{[^}}]*namespace="{re.escape(namespace)}"[^}}]*}} (\S+)$'
        found[node] = sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))
    return found


def _series(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for m in re.finditer(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M):
        out.append((dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))), float(m.group(2))))
    return out


def l7_requests(lab: Lab, *, namespace: str) -> dict[str, dict[str, float]]:
    """What the agents counted of `namespace`'s requests: `route` -> requests the L7 path
    answered by that route rule (`route_request_total`, the client's agent), and `server_pod`
    -> requests each server pod received (`request_total`, inbound): the per-request spread."""
    routes: dict[str, float] = {}
    pods: dict[str, float] = {}
    for node in lab.agent_pids():
        text = _metrics(lab, node)
        for labels, value in _series(text, "route_request_total"):
            if namespace in (labels.get("namespace"), labels.get("dst_namespace")):
                key = labels.get("route", "?")
                routes[key] = routes.get(key, 0.0) + value
        for labels, value in _series(text, "request_total"):
            pod = labels.get("pod", "")
            if (labels.get("direction") == "inbound" and labels.get("namespace") == namespace
                    and pod.startswith("server-")):  # fmt: skip
                pods[pod] = pods.get(pod, 0.0) + value
    return {"route": routes, "server_pod": pods}


def requests_counted(lab: Lab, *, namespace: str) -> float:
    """Requests of `namespace`'s pods the agents counted (`request_total`, both directions):
    an opaque run adds none (its connections count in `tcp_open_total` only)."""
    total = 0.0
    for node in lab.agent_pids():
        for labels, value in _series(_metrics(lab, node), "request_total"):
            if namespace in (labels.get("namespace"), labels.get("dst_namespace")):
                total += value
    return total
