"""The lab's network: an underlay bridge, node namespaces with host-gw routes, the kube-proxy
stand-in (iptables DNAT for Service VIPs) and the per-pod hosts/resolv.conf files.

Rendering (`node_commands`, `render_service_rules`, `render_hosts`) is pure; `Network` runs it.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nodemesh.lab.ledger import Ledger
from nodemesh.lab.paths import LabPaths

UNDERLAY_CIDR = ipaddress.ip_network("172.18.0.0/24")
SERVICES_CHAIN = "NM-LAB-SERVICES"
HAIRPIN_CHAIN = "NM-LAB-HAIRPIN"
CLUSTER_DOMAIN = "cluster.local"
CLUSTER_DNS = "10.96.0.10"
SERVICE_CIDR = "10.96.0.0/16"
# The lab's API server stand-in (nodemesh.lab.apiserver) listens on the underlay bridge.
APISERVER_IP = str(UNDERLAY_CIDR.network_address + 254)
# host-local's store as the node sees it (the lab runs CNI plugins with the node's /run).
NODE_IPAM_DIR = "/run/cni/networks"


class CommandError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodeSpec:
    index: int  # from 1

    @property
    def name(self) -> str:
        return f"node{self.index}"

    @property
    def ip(self) -> str:
        return str(UNDERLAY_CIDR.network_address + self.index)

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def gateway(self) -> str:
        return f"10.244.{self.index}.1"


def node_commands(
    paths: LabPaths, node: NodeSpec, all_nodes: Sequence[NodeSpec]
) -> list[list[str]]:
    """`ip` commands (run in the root netns) that wire `node` to the underlay."""
    ns, ul = paths.node_netns(node.name), paths.underlay_netns
    port = f"ul-{node.name}"[:15]
    cmds = [
        ["link", "add", port, "netns", ul, "type", "veth", "peer", "name", "eth0", "netns", ns],
        ["-n", ul, "link", "set", port, "master", "br0", "up"],
        ["-n", ns, "link", "set", "lo", "up"],
        ["-n", ns, "addr", "add", f"{node.ip}/{UNDERLAY_CIDR.prefixlen}", "dev", "eth0"],
        ["-n", ns, "link", "set", "eth0", "up"],
    ]
    for other in all_nodes:
        if other.index != node.index:
            cmds.append(["-n", ns, "route", "add", other.pod_cidr, "via", other.ip, "dev", "eth0"])
    # Node processes (hostNetwork pods) need a route to Service VIPs for connect() to get as far
    # as the OUTPUT DNAT, as a real node's default route gives; it stays on the lab's underlay.
    cmds.append(["-n", ns, "route", "add", SERVICE_CIDR, "dev", "eth0"])
    return cmds


def bridge_conflist(node: NodeSpec, *, ipam_dir: str) -> dict[str, Any]:
    """The node's primary CNI config, as a cluster's primary CNI would install it."""
    return {
        "cniVersion": "1.0.0",
        "name": "lab",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            }
        ],
    }


@dataclass(frozen=True)
class ServiceRoute:
    vip: str
    port: int
    protocol: str
    backends: tuple[tuple[str, int], ...]  # ready endpoints (ip, target port)


def service_routes(
    services: Iterable[dict[str, Any]], slices: Iterable[dict[str, Any]]
) -> list[ServiceRoute]:
    by_service: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in slices:
        key = (s["metadata"]["namespace"], s["metadata"]["labels"]["kubernetes.io/service-name"])
        by_service.setdefault(key, []).append(s)
    routes = []
    for svc in services:
        key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
        vip = svc["spec"].get("clusterIP")
        if not vip or vip == "None":
            continue
        for port in svc["spec"]["ports"]:
            backends: list[tuple[str, int]] = []
            for s in by_service.get(key, []):
                target = next(
                    (p["port"] for p in s["ports"] if p.get("name", "") == port.get("name", "")),
                    None,
                )
                if target is None:
                    continue
                for ep in s["endpoints"]:
                    if ep["conditions"].get("ready"):
                        backends.extend((a, int(target)) for a in ep["addresses"])
            routes.append(
                ServiceRoute(vip, int(port["port"]), port.get("protocol", "TCP"), tuple(backends))
            )
    return routes


def render_service_rules(routes: Sequence[ServiceRoute]) -> str:
    """iptables-restore input that replaces the kube-proxy stand-in's chain in one commit.
    Each backend is chosen with probability 1/(remaining), which is uniform overall."""
    lines = ["*nat", f":{SERVICES_CHAIN} - [0:0]", f":{HAIRPIN_CHAIN} - [0:0]"]
    # A pod sent to itself through a VIP would get its own packet back with its own source and
    # drop the reply: masquerade that case to the node's bridge address, as kube-proxy does.
    for ip in sorted({ip for r in routes for ip, _ in r.backends}):
        lines.append(f"-A {HAIRPIN_CHAIN} -s {ip}/32 -d {ip}/32 -j MASQUERADE")
    for r in sorted(routes, key=lambda r: (r.vip, r.port, r.protocol)):
        proto = r.protocol.lower()
        match = f"-A {SERVICES_CHAIN} -d {r.vip}/32 -p {proto} -m {proto} --dport {r.port}"
        n = len(r.backends)
        for i, (ip, target) in enumerate(r.backends):
            remaining = n - i
            stat = (
                f" -m statistic --mode random --probability {1 / remaining:.11f}"
                if remaining > 1
                else ""
            )
            lines.append(f"{match}{stat} -j DNAT --to-destination {ip}:{target}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_hosts(
    *, pod_ip: str, pod_name: str, namespace: str, services: Iterable[dict[str, Any]]
) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines.append(f"{pod_ip}\t{pod_name}")
    for svc in sorted(services, key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"])):
        vip = svc["spec"].get("clusterIP")
        if not vip or vip == "None":
            continue
        name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
        names = [f"{name}.{ns}.svc.{CLUSTER_DOMAIN}", f"{name}.{ns}.svc", f"{name}.{ns}"]
        if ns == namespace:
            names.append(name)
        lines.append(f"{vip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def render_resolv(namespace: str) -> str:
    search = f"{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"nameserver {CLUSTER_DNS}\nsearch {search}\noptions ndots:5 timeout:1 attempts:1\n"


async def run(*argv: str, stdin: str | None = None, timeout: float = 30) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandError(f"{' '.join(argv)}: timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        raise CommandError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


class Network:
    """Creates the lab's namespaces and links, recording each in the ledger before creating it."""

    def __init__(self, paths: LabPaths, ledger: Ledger, nodes: Sequence[NodeSpec]) -> None:
        self.paths, self.ledger, self.nodes = paths, ledger, list(nodes)

    async def add_netns(self, name: str) -> None:
        self.ledger.netns(name)
        await run("ip", "netns", "add", name)

    async def build(self) -> None:
        ul = self.paths.underlay_netns
        await self.add_netns(ul)
        await run("ip", "-n", ul, "link", "add", "br0", "type", "bridge")
        await run("ip", "-n", ul, "link", "set", "br0", "up")
        await run("ip", "-n", ul, "link", "set", "lo", "up")
        await run("ip", "-n", ul, "addr", "add", f"{APISERVER_IP}/{UNDERLAY_CIDR.prefixlen}",
                  "dev", "br0")  # fmt: skip
        for node in self.nodes:
            await self.add_netns(self.paths.node_netns(node.name))
        for node in self.nodes:
            for cmd in node_commands(self.paths, node, self.nodes):
                await run("ip", *cmd)
        for node in self.nodes:  # answers of the API server stand-in to pods: via their node
            await run("ip", "-n", ul, "route", "add", node.pod_cidr, "via", node.ip)
        for node in self.nodes:
            ns = self.paths.node_netns(node.name)
            await run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            # Service VIPs are DNATed for pods (PREROUTING) and for node processes (OUTPUT).
            await self.iptables_restore(node, render_service_rules([]))
            for chain, target in (
                ("PREROUTING", SERVICES_CHAIN),
                ("OUTPUT", SERVICES_CHAIN),
                ("POSTROUTING", HAIRPIN_CHAIN),
            ):
                await run(
                    "ip", "netns", "exec", ns, "iptables-legacy", "-w", "-t", "nat",
                    "-A", chain, "-j", target,
                )  # fmt: skip
            # A VIP that nothing was DNATed to (no endpoints, or the cluster DNS address the
            # lab does not serve) is refused at once, as kube-proxy does, instead of letting
            # clients wait for a timeout.
            for chain in ("FORWARD", "OUTPUT"):
                await run(
                    "ip", "netns", "exec", ns, "iptables-legacy", "-w", "-t", "filter",
                    "-A", chain, "-d", SERVICE_CIDR, "-j", "REJECT",
                )  # fmt: skip

    async def iptables_restore(self, node: NodeSpec, text: str) -> None:
        ns = self.paths.node_netns(node.name)
        await run(
            "ip", "netns", "exec", ns, "iptables-legacy-restore", "-w", "--noflush", stdin=text
        )
