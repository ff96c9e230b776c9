"""Properties of the planned nat chains that decide where a pod's traffic goes."""

from __future__ import annotations

import pytest

from nodeagent.rules import RedirectSettings, build_plan, build_pod_plan, parse_ports
from nodeagent.rules.model import MAX_CHAIN_NAME, OUTPUT_CHAIN, PREROUTING_CHAIN, RuleSpec


def first_match(
    rules: tuple[RuleSpec, ...],
    *,
    proto: str,
    dport: int,
    dst: str = "10.1.1.1",
    mark: int | None = None,
    out: str = "eth0",
) -> RuleSpec:
    """A tiny model of how the kernel walks one chain: the first matching rule decides."""
    import ipaddress

    for r in rules:
        if r.mark is not None and (mark is None or int(r.mark, 16) != mark):
            continue
        if r.out_interface is not None and r.out_interface != out:
            continue
        if r.protocol is not None and r.protocol != proto:
            continue
        if r.destination is not None and ipaddress.ip_address(dst) not in ipaddress.ip_network(
            r.destination
        ):
            continue
        if r.dport is not None and r.dport != dport:
            continue
        if r.dports and not any(
            int(p.split(":")[0]) <= dport <= int(p.split(":")[-1]) for p in r.dports
        ):
            continue
        return r
    raise AssertionError("no rule matched: the chain falls through")


def output(settings: RedirectSettings) -> tuple[RuleSpec, ...]:
    return build_plan(settings).chain(OUTPUT_CHAIN).rules


def prerouting(settings: RedirectSettings) -> tuple[RuleSpec, ...]:
    return build_plan(settings).chain(PREROUTING_CHAIN).rules


def test_chain_names_fit_the_kernel_limit() -> None:
    plan = build_plan(RedirectSettings())
    assert all(len(c.name) <= MAX_CHAIN_NAME for c in plan.chains)
    assert {(j.chain, j.target) for j in plan.jumps} == {
        ("OUTPUT", OUTPUT_CHAIN),
        ("PREROUTING", PREROUTING_CHAIN),
    }


def test_outbound_tcp_goes_to_4140_and_dns_to_4153() -> None:
    rules = output(RedirectSettings())
    r = first_match(rules, proto="tcp", dport=80)
    assert (r.target, r.to_ports) == ("REDIRECT", 4140)
    # TCP/53 must hit the DNS rule, which therefore sits before the catch-all TCP redirect.
    for proto in ("udp", "tcp"):
        r = first_match(rules, proto=proto, dport=53)
        assert (r.target, r.to_ports) == ("REDIRECT", 4153)


def test_agent_marked_and_loopback_traffic_is_never_captured() -> None:
    rules = output(RedirectSettings(agent_mark=0x1234))
    assert first_match(rules, proto="tcp", dport=80, mark=0x1234).target == "RETURN"
    assert first_match(rules, proto="udp", dport=53, mark=0x1234).target == "RETURN"
    assert first_match(rules, proto="tcp", dport=80, out="lo").target == "RETURN"
    assert first_match(rules, proto="tcp", dport=80, mark=0x6E6D).target == "REDIRECT"


def test_skip_outbound_ports_and_cidrs_return() -> None:
    s = RedirectSettings(
        skip_outbound_ports=parse_ports("3306,8000-8010"), skip_outbound_cidrs=("192.168.0.0/16",)
    )
    rules = output(s)
    for port in (3306, 8000, 8005, 8010):
        assert first_match(rules, proto="tcp", dport=port).target == "RETURN"
    assert first_match(rules, proto="tcp", dport=8011).target == "REDIRECT"
    assert first_match(rules, proto="tcp", dport=80, dst="192.168.3.4").target == "RETURN"
    assert first_match(rules, proto="tcp", dport=80, dst="192.169.0.1").target == "REDIRECT"


def test_skipping_port_53_leaves_all_dns_alone() -> None:
    rules = output(RedirectSettings(skip_outbound_ports=parse_ports("50-60")))
    assert not any(r.to_ports == 4153 for r in rules)
    assert first_match(rules, proto="tcp", dport=53).target == "RETURN"


def test_dns_capture_off() -> None:
    rules = output(RedirectSettings(capture_dns=False))
    assert not any(r.dport == 53 for r in rules)
    assert first_match(rules, proto="tcp", dport=53).to_ports == 4140


def test_inbound_tunnel_skips_and_redirect() -> None:
    rules = prerouting(RedirectSettings(skip_inbound_ports=parse_ports("9000")))
    assert first_match(rules, proto="tcp", dport=4143).target == "RETURN"
    assert first_match(rules, proto="tcp", dport=9000).target == "RETURN"
    r = first_match(rules, proto="tcp", dport=8080)
    assert (r.target, r.to_ports) == ("REDIRECT", 4141)


def test_many_skip_ports_are_split_within_multiport_limit() -> None:
    # 40 single ports (not adjacent, so they are not merged into a range) and 5 ranges.
    ports = tuple((p, p) for p in range(1000, 1080, 2)) + tuple(
        (p, p + 5) for p in range(2000, 2050, 10)
    )
    rules = output(RedirectSettings(skip_outbound_ports=ports))
    groups = [r.dports for r in rules if r.dports]
    assert all(sum(2 if ":" in p else 1 for p in g) <= 15 for g in groups)
    assert len(groups) == 4  # 40 + 5 * 2 slots, at most 15 per rule
    assert [p for g in groups for p in g] == [str(p) for p in range(1000, 1080, 2)] + [
        f"{p}:{p + 5}" for p in range(2000, 2050, 10)
    ]


def test_parse_ports_merges_and_validates() -> None:
    assert parse_ports(" 80, 8000-8010,8005-8020 ,81") == ((80, 81), (8000, 8020))
    assert parse_ports("") == ()
    for bad in ("0", "70000", "10-5", "http", "1-2-3"):
        with pytest.raises(ValueError):
            parse_ports(bad)


def test_settings_validation_and_round_trip() -> None:
    with pytest.raises(ValueError):
        RedirectSettings(skip_outbound_cidrs=("fd00::/8",))
    with pytest.raises(ValueError):
        RedirectSettings(agent_mark=0)
    with pytest.raises(ValueError):
        RedirectSettings.from_dict({"skip_ports": []})
    s = RedirectSettings(
        skip_inbound_ports=((9000, 9001),),
        skip_outbound_cidrs=("10.0.0.1", "10.0.0.0/8"),
        capture_dns=False,
    )
    assert s.skip_outbound_cidrs == ("10.0.0.0/8", "10.0.0.1/32")
    import json

    assert RedirectSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def walk(
    rules: tuple[RuleSpec, ...],
    *,
    proto: str = "tcp",
    dport: int = 8080,
    src: str = "10.244.2.7",
    iface: str = "eth0",
    reply: bool = False,
) -> str:
    """The verdict of the first matching rule of a filter or nat chain ("" if none matches)."""
    import ipaddress

    for r in rules:
        if r.source is not None and ipaddress.ip_address(src) not in ipaddress.ip_network(r.source):
            continue
        if r.in_interface is not None and r.in_interface != iface:
            continue
        if r.out_interface is not None and r.out_interface != iface:
            continue
        if r.protocol is not None and r.protocol != proto:
            continue
        if r.ctstate is not None and not reply:
            continue
        if r.dport is not None and r.dport != dport:
            continue
        if r.dports and not any(
            int(p.split(":")[0]) <= dport <= int(p.split(":")[-1]) for p in r.dports
        ):
            continue
        return r.target
    return ""


def test_probes_from_the_node_reach_the_app_and_everything_else_is_redirected() -> None:
    rules = prerouting(RedirectSettings(probe_sources=("10.244.1.1", "172.18.0.1")))
    assert walk(rules, src="10.244.1.1", dport=8080) == "RETURN"
    assert walk(rules, src="172.18.0.1", dport=9) == "RETURN"
    # Another node, another pod, or a pod pretending from next door: captured.
    for src in ("172.18.0.2", "10.244.1.7", "10.244.2.1"):
        assert walk(rules, src=src) == "REDIRECT"
    # The tunnel port still goes to the agent's 4143 first.
    assert walk(rules, src="10.244.1.1", dport=4143) == "RETURN"


def test_strict_udp_drops_all_but_dns_replies_loopback_and_listed_ports() -> None:
    plan = build_pod_plan(
        RedirectSettings(drop_inbound_udp=True, allowed_inbound_udp_ports=((5353, 5353),))
    )
    rules = plan.filter4.chain("NODEMESH_INPUT").rules
    assert [(j.chain, j.target) for j in plan.filter4.jumps] == [("INPUT", "NODEMESH_INPUT")]
    assert walk(rules, proto="udp", dport=9999) == "DROP"
    assert walk(rules, proto="udp", dport=53) == "RETURN"
    assert walk(rules, proto="udp", dport=5353) == "RETURN"
    assert walk(rules, proto="udp", dport=9999, reply=True) == "RETURN"
    assert walk(rules, proto="udp", dport=9999, iface="lo") == "RETURN"
    assert walk(rules, proto="tcp", dport=9999) == ""  # TCP is the nat table's business


def test_permissive_pods_have_no_filter_rules_but_ipv6_is_always_closed() -> None:
    plan = build_pod_plan(RedirectSettings())
    assert plan.filter4.chains == () and plan.filter4.jumps == ()
    v6 = plan.filter6
    assert (v6.table, v6.family) == ("filter", 6)
    # In: silently dropped. Out: rejected, so the app's connect fails at once.
    for chain, verdict in (("NODEMESH_INPUT", "DROP"), ("NODEMESH_OUTPUT", "REJECT")):
        rules = v6.chain(chain).rules
        for proto in ("tcp", "udp", "icmpv6"):
            assert walk(rules, proto=proto, src="fe80::1") == verdict, (chain, proto)
        assert walk(rules, iface="lo", src="::1") == "RETURN"


def test_probe_sources_and_udp_ports_validate_and_round_trip() -> None:
    import json

    for bad in ("10.0.0.1/24", "fe80::1", "gateway"):
        with pytest.raises(ValueError):
            RedirectSettings(probe_sources=(bad,))
    with pytest.raises(ValueError):
        RedirectSettings(allowed_inbound_udp_ports=((0, 10),))
    s = RedirectSettings(
        probe_sources=("172.18.0.1", "10.244.1.1", "10.244.1.1"),
        drop_inbound_udp=True,
        allowed_inbound_udp_ports=((9000, 9001), (5353, 5353)),
    )
    assert s.probe_sources == ("10.244.1.1", "172.18.0.1")
    assert s.allowed_inbound_udp_ports == ((5353, 5353), (9000, 9001))
    assert RedirectSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    # A state file written before these settings existed still loads.
    old = {k: v for k, v in s.to_dict().items() if k not in ("probe_sources", "drop_inbound_udp")}
    assert RedirectSettings.from_dict(old).probe_sources == ()
