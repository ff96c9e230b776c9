"""Properties of the planned nat chains that decide where a pod's traffic goes."""

from __future__ import annotations

import pytest

from nodeagent.rules import RedirectSettings, build_plan, parse_ports
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
