"""Small sans-io parts of the agent: flags, pod settings to rules, resolv.conf, netlink replies."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from agent_fakes import pod_pb

from nodeagent import podplan
from nodeagent.config import parse_args
from nodeagent.proxy.dnsforward import first_nameserver
from nodeagent.proxy.podnetns import (
    IFA_ADDRESS,
    IFA_LOCAL,
    NLMSG_DONE,
    RTM_NEWADDR,
    dump_request,
    parse_addresses,
)
from nodeagent.rules import build_plan, render_restore
from nodemesh import destination_codec as codec
from nodemesh.api import destination_pb2 as pb


def test_flags_and_defaults() -> None:
    cfg = parse_args(["--node", "node1"])
    assert cfg.cni_socket == Path("/var/run/nodemesh/cni.sock")
    assert cfg.state_file == Path("/var/run/nodemesh/agent-state.json")
    assert cfg.controlplane == "nodemesh-controlplane.nodemesh.svc.cluster.local:8086"
    assert (cfg.admin_host, cfg.admin_port, cfg.mark) == ("0.0.0.0", 4191, 0x6E6D)
    cfg = parse_args(["--node", "n", "--mark", "0x10", "--admin-addr", "127.0.0.1:9",
                      "--controlplane-insecure"])  # fmt: skip
    assert (cfg.mark, cfg.admin_host, cfg.admin_port, cfg.controlplane_insecure) == (
        16,
        "127.0.0.1",
        9,
        True,
    )
    with pytest.raises(SystemExit):
        parse_args([])
    with pytest.raises(SystemExit):
        parse_args(["--node", "n", "--mark", "0"])


def test_pod_settings_become_the_rules_plan() -> None:
    info = codec.pod_from_pb(pod_pb("web", skip_in=(9000, 9100)))
    settings = podplan.redirect_settings(info, mark=0x42)
    text = render_restore(build_plan(settings))
    assert "--mark 0x42" in text
    assert "--dports 9000:9100" in text
    assert "--to-ports 4140" in text and "--to-ports 4141" in text and "--to-ports 4153" in text
    assert podplan.wants_mesh(info)
    assert not podplan.wants_mesh(codec.pod_from_pb(pod_pb("h", host_network=True)))
    assert not podplan.wants_mesh(codec.pod_from_pb(pod_pb("off", meshed=False)))


def test_strict_pods_drop_udp_and_probes_come_from_the_gateway_and_the_node() -> None:
    pb_pod = pod_pb("web")
    pb_pod.host_ip = "172.18.0.1"
    permissive = codec.pod_from_pb(pb_pod)
    s = podplan.redirect_settings(permissive, mark=0x42, gateways=("10.244.1.1", "fd00::1"))
    assert s.probe_sources == ("10.244.1.1", "172.18.0.1")
    assert not s.drop_inbound_udp
    pb_pod.mesh.inbound_mode = pb.InboundMode.STRICT
    pb_pod.mesh.allow_inbound_udp_ports.append(pb.PortRange(first=5353, last=5353))
    strict = podplan.redirect_settings(codec.pod_from_pb(pb_pod), mark=0x42)
    assert strict.drop_inbound_udp and strict.allowed_inbound_udp_ports == ((5353, 5353),)
    assert strict.probe_sources == ("172.18.0.1",)


def test_first_nameserver_of_a_resolv_conf() -> None:
    text = "# lab\nsearch shop.svc.cluster.local\nnameserver fd00::1\nnameserver 10.96.0.10\n"
    assert first_nameserver(text) == "10.96.0.10"
    assert first_nameserver("search x\n") is None


def _attr(kind: int, ip: str) -> bytes:
    return struct.pack("=HH", 8, kind) + socket.inet_aton(ip)


def _newaddr(*attrs: bytes, family: int = socket.AF_INET) -> bytes:
    body = struct.pack("=BBBBI", family, 24, 0, 0, 2) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWADDR, 2, 1, 0) + body


def test_netlink_address_dump_is_parsed() -> None:
    assert len(dump_request()) == 24
    data = _newaddr(_attr(IFA_ADDRESS, "10.0.0.2"), _attr(IFA_LOCAL, "10.0.0.2"))
    data += _newaddr(_attr(IFA_LOCAL, "127.0.0.1"))
    found, done = parse_addresses(data)
    assert found == {"10.0.0.2", "127.0.0.1"} and not done
    done_msg = struct.pack("=IHHII", 20, NLMSG_DONE, 2, 1, 0) + b"\0\0\0\0"
    assert parse_addresses(done_msg) == (set(), True)
    with pytest.raises(ValueError):
        parse_addresses(data[:-3])


def test_half_closed_timeout_and_gone_pod_grace_are_configurable() -> None:
    from nodeagent.config import parse_args

    default = parse_args(["--node", "n1"])
    assert (default.half_closed_timeout_seconds, default.gone_pod_grace_seconds) == (60.0, 120.0)
    cfg = parse_args(
        ["--node", "n1", "--half-closed-timeout-seconds", "5", "--gone-pod-grace-seconds", "30"]
    )
    assert (cfg.half_closed_timeout_seconds, cfg.gone_pod_grace_seconds) == (5.0, 30.0)


def test_the_l7_request_body_limits_are_configurable() -> None:
    from nodeagent.config import parse_args

    default = parse_args(["--node", "n1"])
    assert (default.request_body_timeout_seconds, default.request_body_min_rate) == (60.0, 1024)
    cfg = parse_args(
        ["--node", "n1", "--request-body-timeout-seconds", "5", "--request-body-min-rate", "100"]
    )
    assert (cfg.request_body_timeout_seconds, cfg.request_body_min_rate) == (5.0, 100)
