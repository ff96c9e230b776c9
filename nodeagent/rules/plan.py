"""Plan the chains nodemesh installs in a pod netns, as data (no iptables, no I/O).

Three tables: IPv4 nat (the redirection to the agent), IPv4 filter (strict pods: inbound UDP
other than DNS and listed ports dropped, since UDP is never proxied or authenticated) and IPv6
filter (everything but loopback dropped: the agent proxies IPv4 only, so IPv6 must not carry a
meshed pod's traffic around it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from nodeagent.rules.model import (
    INPUT_CHAIN,
    OUTPUT_CHAIN,
    PREROUTING_CHAIN,
    ChainPlan,
    NatPlan,
    PodPlan,
    RuleSpec,
)
from nodemesh import ports

PortRange = tuple[int, int]

DNS_PORT = 53
# xt_multiport takes at most 15 ports per rule, and a range uses two of them.
MULTIPORT_SLOTS = 15


def parse_ports(text: str) -> tuple[PortRange, ...]:
    """Parse an annotation value like "22, 8000-8010" into sorted, merged (low, high) ranges."""
    ranges: list[PortRange] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        low_s, sep, high_s = item.partition("-")
        try:
            low = int(low_s)
            high = int(high_s) if sep else low
        except ValueError:
            raise ValueError(f"bad port or port range {item!r}") from None
        ranges.append((low, high))
    return merge_ranges(ranges)


def merge_ranges(ranges: Iterable[PortRange]) -> tuple[PortRange, ...]:
    merged: list[PortRange] = []
    for low, high in sorted(ranges):
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"bad port range {low}-{high}")
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return tuple(merged)


@dataclass(frozen=True)
class RedirectSettings:
    """What decides a pod's rules: the agent's mark and ports, the pod's skips, DNS capture."""

    agent_mark: int = 0x6E6D
    outbound_port: int = ports.OUTBOUND
    inbound_port: int = ports.INBOUND
    tunnel_port: int = ports.TUNNEL
    dns_port: int = ports.DNS
    skip_inbound_ports: tuple[PortRange, ...] = ()
    skip_outbound_ports: tuple[PortRange, ...] = ()
    skip_outbound_cidrs: tuple[str, ...] = ()
    capture_dns: bool = True
    # Node-side addresses the kubelet's probes come from (the pod's gateway, the node's IP):
    # their TCP goes straight to the app, so a probe sees what it would see without the mesh.
    probe_sources: tuple[str, ...] = ()
    # Strict pods: inbound UDP is dropped except DNS, replies and these ports.
    drop_inbound_udp: bool = False
    allowed_inbound_udp_ports: tuple[PortRange, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.agent_mark <= 0xFFFFFFFF:
            raise ValueError(f"agent mark {self.agent_mark:#x} is not a 32-bit non-zero value")
        for port in (self.outbound_port, self.inbound_port, self.tunnel_port, self.dns_port):
            if not 1 <= port <= 65535:
                raise ValueError(f"bad port {port}")
        # Normalised here so equal settings always give an identical plan (and golden text).
        object.__setattr__(self, "skip_inbound_ports", merge_ranges(self.skip_inbound_ports))
        object.__setattr__(self, "skip_outbound_ports", merge_ranges(self.skip_outbound_ports))
        cidrs = []
        for cidr in self.skip_outbound_cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            if net.version != 4:
                raise ValueError(f"{cidr}: only IPv4 is redirected (the nat table of iptables)")
            cidrs.append(net)
        object.__setattr__(
            self, "skip_outbound_cidrs", tuple(n.with_prefixlen for n in sorted(set(cidrs)))
        )
        sources = set()
        for text in self.probe_sources:
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                raise ValueError(f"probe source {text!r} is not an IP address") from None
            if addr.version != 4:
                raise ValueError(f"probe source {text}: only IPv4 is redirected")
            sources.add(addr)
        object.__setattr__(self, "probe_sources", tuple(str(a) for a in sorted(sources)))
        object.__setattr__(
            self, "allowed_inbound_udp_ports", merge_ranges(self.allowed_inbound_udp_ports)
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the agent's state file and the golden cases."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RedirectSettings:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown redirect settings {sorted(unknown)}")
        kwargs = dict(data)
        for key in ("skip_inbound_ports", "skip_outbound_ports", "allowed_inbound_udp_ports"):
            if key in kwargs:
                kwargs[key] = tuple((int(lo), int(hi)) for lo, hi in kwargs[key])
        for key in ("skip_outbound_cidrs", "probe_sources"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def _covers(ranges: tuple[PortRange, ...], port: int) -> bool:
    return any(low <= port <= high for low, high in ranges)


def _multiport_groups(ranges: tuple[PortRange, ...]) -> list[tuple[str, ...]]:
    groups: list[tuple[str, ...]] = []
    current: list[str] = []
    used = 0
    for low, high in ranges:
        item, cost = (str(low), 1) if low == high else (f"{low}:{high}", 2)
        if used + cost > MULTIPORT_SLOTS:
            groups.append(tuple(current))
            current, used = [], 0
        current.append(item)
        used += cost
    if current:
        groups.append(tuple(current))
    return groups


def _skip_ports(
    chain: str, ranges: tuple[PortRange, ...], why: str, *, protocol: str = "tcp"
) -> list[RuleSpec]:
    return [
        RuleSpec(chain=chain, protocol=protocol, dports=group, target="RETURN", comment=why)
        for group in _multiport_groups(ranges)
    ]


def _output_rules(s: RedirectSettings) -> list[RuleSpec]:
    c = OUTPUT_CHAIN
    # Order matters: the first matching rule wins. The agent's own (marked) sockets must never
    # come back to the agent, or every upstream connection would loop; loopback is the app
    # talking to itself (or to the agent's listeners) and is never captured.
    rules = [
        RuleSpec(chain=c, mark=f"{s.agent_mark:#x}", target="RETURN", comment="nodemesh agent"),
        RuleSpec(chain=c, out_interface="lo", target="RETURN", comment="nodemesh loopback"),
    ]
    # An explicit skip beats every capture below it, DNS included: the user asked for it.
    rules += _skip_ports(c, s.skip_outbound_ports, "nodemesh skip-outbound-ports")
    rules += [
        RuleSpec(chain=c, destination=cidr, target="RETURN", comment="nodemesh skip-outbound-cidr")
        for cidr in s.skip_outbound_cidrs
    ]
    # DNS goes before the catch-all TCP redirect: TCP/53 would otherwise land on the outbound
    # proxy port instead of the agent's DNS server. If port 53 is skipped, TCP/53 already
    # returned above, so UDP/53 is left alone as well rather than capturing half of DNS.
    if s.capture_dns and not _covers(s.skip_outbound_ports, DNS_PORT):
        for proto in ("udp", "tcp"):
            rules.append(
                RuleSpec(
                    chain=c,
                    protocol=proto,
                    dport=DNS_PORT,
                    target="REDIRECT",
                    to_ports=s.dns_port,
                    syn=proto == "tcp",
                    comment="nodemesh dns",
                )
            )
    rules.append(
        RuleSpec(
            chain=c,
            protocol="tcp",
            syn=True,
            target="REDIRECT",
            to_ports=s.outbound_port,
            comment="nodemesh outbound",
        )
    )
    return rules


def _prerouting_rules(s: RedirectSettings) -> list[RuleSpec]:
    c = PREROUTING_CHAIN
    # Mesh tunnel traffic is already for the agent's own listener; redirecting it to the
    # plaintext inbound port would strip its mTLS meaning.
    rules = [
        RuleSpec(
            chain=c,
            protocol="tcp",
            dport=s.tunnel_port,
            target="RETURN",
            comment="nodemesh tunnel",
        )
    ]
    # The kubelet probes from the node (through the pod's gateway, or from the node's IP): those
    # connections reach the app itself, so a closed port fails a tcpSocket probe and strict
    # mode does not refuse an httpGet probe. Only sources on the pod's own node are listed.
    rules += [
        RuleSpec(
            chain=c,
            source=src,
            protocol="tcp",
            target="RETURN",
            comment="nodemesh probes from the node",
        )
        for src in s.probe_sources
    ]
    rules += _skip_ports(c, s.skip_inbound_ports, "nodemesh skip-inbound-ports")
    rules.append(
        RuleSpec(
            chain=c,
            protocol="tcp",
            syn=True,
            target="REDIRECT",
            to_ports=s.inbound_port,
            comment="nodemesh inbound",
        )
    )
    return rules


def build_plan(settings: RedirectSettings) -> NatPlan:
    """The nat plan for one pod: nodemesh's two chains and the jumps into them."""
    return NatPlan(
        chains=(
            ChainPlan(OUTPUT_CHAIN, tuple(_output_rules(settings))),
            ChainPlan(PREROUTING_CHAIN, tuple(_prerouting_rules(settings))),
        ),
        jumps=(
            RuleSpec(chain="PREROUTING", target=PREROUTING_CHAIN),
            RuleSpec(chain="OUTPUT", target=OUTPUT_CHAIN),
        ),
    )


def _udp_input_plan(s: RedirectSettings) -> NatPlan:
    if not s.drop_inbound_udp:
        return NatPlan(chains=(), jumps=(), table="filter")
    c = INPUT_CHAIN
    rules = [
        RuleSpec(chain=c, in_interface="lo", target="RETURN", comment="nodemesh loopback"),
        # Answers to the pod's own UDP (its DNS upstream, a client it runs) are not inbound.
        RuleSpec(
            chain=c,
            protocol="udp",
            ctstate="RELATED,ESTABLISHED",
            target="RETURN",
            comment="nodemesh udp replies",
        ),
        RuleSpec(chain=c, protocol="udp", dport=DNS_PORT, target="RETURN", comment="nodemesh dns"),
    ]
    rules += _skip_ports(
        c, s.allowed_inbound_udp_ports, "nodemesh allow-inbound-udp-ports", protocol="udp"
    )
    rules.append(RuleSpec(chain=c, protocol="udp", target="DROP", comment="nodemesh strict udp"))
    return NatPlan(
        chains=(ChainPlan(c, tuple(rules)),),
        jumps=(RuleSpec(chain="INPUT", target=c),),
        table="filter",
    )


def _ipv6_plan() -> NatPlan:
    # The agent listens and connects over IPv4 only. Whatever IPv6 a pod has (link-local on
    # every interface, global addresses in a dual-stack cluster) would carry its traffic past
    # the mesh in plaintext, so only loopback is left.
    return NatPlan(
        chains=(
            ChainPlan(
                INPUT_CHAIN,
                (
                    RuleSpec(chain=INPUT_CHAIN, in_interface="lo", target="RETURN",
                             comment="nodemesh loopback"),
                    RuleSpec(chain=INPUT_CHAIN, target="DROP", comment="nodemesh no ipv6"),
                ),
            ),
            ChainPlan(
                OUTPUT_CHAIN,
                (
                    RuleSpec(chain=OUTPUT_CHAIN, out_interface="lo", target="RETURN",
                             comment="nodemesh loopback"),
                    # Rejected, not dropped: the app's connect fails at once (EACCES) and a
                    # client that tries IPv6 first falls back to IPv4 instead of timing out.
                    RuleSpec(chain=OUTPUT_CHAIN, target="REJECT", comment="nodemesh no ipv6",
                             reject_with="icmp6-adm-prohibited"),
                ),
            ),
        ),
        jumps=(
            RuleSpec(chain="INPUT", target=INPUT_CHAIN),
            RuleSpec(chain="OUTPUT", target=OUTPUT_CHAIN),
        ),
        table="filter",
        family=6,
    )  # fmt: skip


def build_pod_plan(settings: RedirectSettings) -> PodPlan:
    """Everything for one pod: the nat redirection, strict UDP, and IPv6 held closed."""
    return PodPlan(
        nat=build_plan(settings), filter4=_udp_input_plan(settings), filter6=_ipv6_plan()
    )
