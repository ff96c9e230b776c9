"""DNS inside a meshed pod (root): the real agent, enrolled through the real CNI plugin, answers
Service names from its destination table over UDP and TCP port 53 (redirected to 4153), and
still forwards every other name to the pod's resolver. Same world as
test_agent_netns_enrolment (node netns, pods on a bridge, control plane on a thread)."""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any

from test_agent_netns_enrolment import (  # noqa: F401 (world is a fixture)
    IPS,
    NODE_IP,
    World,
    enrol_all,
    obj_pod,
    pytestmark,
    world,
)

from nodeagent.protocol import dns
from nodemesh.netns import socket_in_netns

__all__ = ["pytestmark"]


def service_obj(name: str, cluster_ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "clusterIP": cluster_ip,
            "selector": {"app": "b"},
            "ports": [{"name": "http", "port": 80, "targetPort": 9090, "protocol": "TCP"}],
        },
    }


def slice_obj(service: str, pod: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-abcde",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [IPS[pod]],
                "conditions": {"ready": True},
                "nodeName": "node1",
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod},
            }
        ],
        "ports": [{"name": "http", "port": 9090, "protocol": "TCP"}],
    }


def addresses(reply: bytes) -> tuple[int, list[str]]:
    rcode = reply[3] & 0xF
    _, pos = dns.read_name(reply, 12)
    pos += 4
    found = []
    for _ in range(int.from_bytes(reply[6:8], "big")):
        _, pos = dns.read_name(reply, pos)
        rdlen = int.from_bytes(reply[pos + 8 : pos + 10], "big")
        found.append(str(ipaddress.ip_address(reply[pos + 10 : pos + 10 + rdlen])))
        pos += 10 + rdlen
    return rcode, found


def udp_ask(w: World, pod: str, query: bytes) -> bytes:
    s = socket_in_netns(w.netns(pod), type=socket.SOCK_DGRAM)
    with s:
        s.settimeout(5)
        s.sendto(query, (NODE_IP, 53))  # the pod's resolver: the rules hand it to the agent
        reply, peer = s.recvfrom(4096)
    assert peer == (NODE_IP, 53)
    return reply


def tcp_ask(w: World, pod: str, query: bytes) -> bytes:
    s = socket_in_netns(w.netns(pod))
    with s:
        s.settimeout(5)
        s.connect((NODE_IP, 53))
        s.sendall(dns.frame_tcp(query))
        data = b""
        while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
            chunk = s.recv(4096)
            assert chunk, "connection closed before the answer"
            data += chunk
    return data[2:]


def test_pods_resolve_service_names_from_the_agents_table(world: World) -> None:  # noqa: F811
    w = world
    w.objects.put(service_obj("web", "10.96.7.7"))
    w.objects.put(service_obj("db", "None"))
    w.objects.put(slice_obj("db", "b"))
    for pod in ("a", "b"):
        w.objects.put(obj_pod("shop", pod, IPS[pod], {"app": pod}))
    w.start_agent()
    enrol_all(w)
    resolver_saw = w.udp_server(53)

    query = dns.build_query("web.shop.svc.cluster.local", query_id=0x4242)
    deadline = time.monotonic() + 20
    reply = udp_ask(w, "a", query)
    # The table may lag the objects by a moment; until it has the Service the answer is NXDOMAIN.
    while addresses(reply) != (dns.NOERROR, ["10.96.7.7"]) and time.monotonic() < deadline:
        time.sleep(0.2)
        reply = udp_ask(w, "a", query)
    assert addresses(reply) == (dns.NOERROR, ["10.96.7.7"]), w.log_text()
    assert reply[:2] == b"\x42\x42"

    # The search-list forms, a headless Service, and a name that is not there.
    assert addresses(udp_ask(w, "a", dns.build_query("web")))[1] == ["10.96.7.7"]
    assert addresses(udp_ask(w, "a", dns.build_query("web.shop")))[1] == ["10.96.7.7"]
    assert addresses(udp_ask(w, "a", dns.build_query("db.shop.svc.cluster.local"))) == (
        dns.NOERROR,
        [IPS["b"]],
    )
    assert addresses(udp_ask(w, "a", dns.build_query("nope.shop.svc.cluster.local")))[0] == (
        dns.NXDOMAIN
    )
    aaaa = udp_ask(w, "a", dns.build_query("web.shop.svc.cluster.local", dns.TYPE_AAAA))
    assert addresses(aaaa) == (dns.NOERROR, [])
    # Over TCP too.
    tcp_reply = tcp_ask(w, "b", dns.build_query("web.shop.svc.cluster.local", query_id=7))
    assert addresses(tcp_reply) == (dns.NOERROR, ["10.96.7.7"])
    assert resolver_saw == []  # none of that reached the upstream resolver

    # Anything else still goes to the pod's resolver, from the pod's own address.
    other = dns.build_query("example.com", query_id=9)
    assert udp_ask(w, "a", other) == b"re:" + other
    assert resolver_saw == [IPS["a"]]

    answered = w.metric(
        "nodemesh_agent_dns_queries_total", pod="a", protocol="udp", result="answered"
    )
    assert answered >= 4  # web three ways, db (the first query may have been asked again)
    assert w.metric("nodemesh_agent_dns_queries_total", pod="a", result="nodata") == 1
    assert w.metric("nodemesh_agent_dns_queries_total", pod="a", result="nxdomain") >= 1
    assert w.metric("nodemesh_agent_dns_queries_total", pod="a", result="ok") == 1
    assert w.metric("nodemesh_agent_dns_queries_total", pod="b", protocol="tcp") == 1
