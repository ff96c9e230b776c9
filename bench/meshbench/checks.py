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


def agent_connections(lab: Lab, *, namespace: str) -> dict[str, float]:
    """node -> the agent's count of TCP connections it opened for pods of `namespace`, summed
    over its `tcp_open_total` series (both directions)."""
    found: dict[str, float] = {}
    for node in lab.agent_pids():
        res = subprocess.run(
            ["ip", "netns", "exec", lab.paths.node_netns(node), "python3", "-c", _METRICS],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        pattern = rf'^tcp_open_total{{[^}}]*namespace="{re.escape(namespace)}"[^}}]*}} (\S+)$'
        found[node] = sum(float(m.group(1)) for m in re.finditer(pattern, res.stdout, re.M))
    return found
