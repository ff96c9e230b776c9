"""DNS answers from the destination table: the zone, the search-list forms, headless Services,
NXDOMAIN, what is forwarded; over real UDP and TCP sockets on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from obs_fixtures import service, table

from nodeagent.observe.metrics import DNS_QUERIES
from nodeagent.protocol import dns
from nodeagent.proxy.dnsforward import PodResolver, UdpDnsForwarder, serve_tcp
from nodeagent.proxy.dnsnames import DnsNames

WEB = service("emojivoto", "web-svc", ("10.96.0.10",), [("10.244.1.5", "web-0", True)])
DB = service(
    "data", "db", (), [("10.244.2.7", "db-0", True), ("10.244.1.8", "db-1", True),
                       ("10.244.2.9", "db-2", False)],
)  # fmt: skip


@pytest.fixture
def names() -> DnsNames:
    return DnsNames(table(WEB, DB))


def answer(reply: bytes) -> tuple[int, list[str], int]:
    """(rcode, addresses of A/AAAA answers, authority count) of a reply we built."""
    rcode = reply[3] & 0xF
    ancount = int.from_bytes(reply[6:8], "big")
    nscount = int.from_bytes(reply[8:10], "big")
    _, pos = dns.read_name(reply, 12)
    pos += 4
    ips = []
    for _ in range(ancount):
        _, pos = dns.read_name(reply, pos)
        rtype = int.from_bytes(reply[pos : pos + 2], "big")
        rdlen = int.from_bytes(reply[pos + 8 : pos + 10], "big")
        rdata = reply[pos + 10 : pos + 10 + rdlen]
        pos += 10 + rdlen
        if rtype in (dns.TYPE_A, dns.TYPE_AAAA):
            ips.append(str(ipaddress.ip_address(rdata)))
    return rcode, ips, nscount


def ask(names: DnsNames, name: str, qtype: int = dns.TYPE_A, namespace: str = "emojivoto"):
    return names.decide(dns.build_query(name, qtype, query_id=77), namespace=namespace)


@pytest.mark.parametrize(
    "name",
    [
        "web-svc.emojivoto.svc.cluster.local",
        "WEB-SVC.emojivoto.svc.cluster.local.",
        "web-svc",  # the pod's own namespace
        "web-svc.emojivoto",
        "web-svc.emojivoto.svc",
    ],
)
def test_service_names_get_the_cluster_ip(names: DnsNames, name: str) -> None:
    d = ask(names, name)
    assert d.result == "answered" and d.reply is not None
    assert answer(d.reply)[:2] == (dns.NOERROR, ["10.96.0.10"])
    assert d.reply[:2] == (77).to_bytes(2, "big")


def test_headless_services_get_ready_pod_ips_and_per_pod_names(names: DnsNames) -> None:
    d = ask(names, "db.data.svc.cluster.local")
    assert answer(d.reply)[:2] == (dns.NOERROR, ["10.244.1.8", "10.244.2.7"])
    assert answer(ask(names, "db-0.db.data.svc.cluster.local").reply)[1] == ["10.244.2.7"]
    assert answer(ask(names, "db-2.db.data.svc.cluster.local").reply)[0] == dns.NXDOMAIN


def test_unknown_names_in_the_zone_are_nxdomain_with_the_soa(names: DnsNames) -> None:
    for name in ("nope.emojivoto.svc.cluster.local", "web-svc.other.svc.cluster.local",
                 "a.b.c.d.svc.cluster.local", "web-svc.emojivoto.emojivoto.svc.cluster.local"):  # fmt: skip
        d = ask(names, name)
        assert d.result == "nxdomain", name
        rcode, ips, authority = answer(d.reply)
        assert (rcode, ips, authority) == (dns.NXDOMAIN, [], 1)


def test_aaaa_and_other_types_are_noerror_and_empty(names: DnsNames) -> None:
    for qtype in (dns.TYPE_AAAA, 16):  # AAAA, TXT
        d = ask(names, "web-svc.emojivoto.svc.cluster.local", qtype)
        assert d.result == "nodata"
        assert answer(d.reply)[:2] == (dns.NOERROR, [])


def test_everything_else_is_forwarded(names: DnsNames) -> None:
    for name in ("example.com", "nope", "nope.emojivoto"):
        assert ask(names, name).reply is None, name
    assert names.decide(b"\x12\x34garbage", namespace="emojivoto").reply is None


def test_custom_cluster_domain() -> None:
    names = DnsNames(table(WEB), cluster_domain="corp.example.")
    assert answer(ask(names, "web-svc.emojivoto.svc.corp.example").reply)[1] == ["10.96.0.10"]
    assert ask(names, "web-svc.emojivoto.svc.cluster.local").reply is None


def test_the_table_is_read_live(names: DnsNames) -> None:
    names.table.services.clear()
    assert ask(names, "web-svc.emojivoto.svc.cluster.local").result == "nxdomain"


def _count(pod: str, protocol: str, result: str) -> float:
    return DNS_QUERIES.labels("emojivoto", pod, protocol, result)._value.get()


async def test_udp_and_tcp_listeners_answer_from_the_table(names: DnsNames) -> None:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as pool:
        common = dict(netns="/nonexistent", namespace="emojivoto", pod="dns-test-pod",
                      upstream=lambda: None, mark=0x6E6D, executor=pool, names=names)  # fmt: skip
        transport, forwarder = await loop.create_datagram_endpoint(
            lambda: UdpDnsForwarder(**common), local_addr=("127.0.0.1", 0)
        )
        resolver = PodResolver(**common)
        server = await asyncio.start_server(lambda r, w: serve_tcp(resolver, r, w), "127.0.0.1", 0)
        try:
            udp_port = transport.get_extra_info("sockname")[1]
            tcp_port = server.sockets[0].getsockname()[1]
            before = _count("dns-test-pod", "udp", "answered")

            def udp_query() -> bytes:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(5)
                    s.sendto(dns.build_query("web-svc", query_id=1), ("127.0.0.1", udp_port))
                    return s.recv(4096)

            assert answer(await asyncio.to_thread(udp_query))[1] == ["10.96.0.10"]
            assert _count("dns-test-pod", "udp", "answered") == before + 1

            reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
            # Two queries on one connection, answered in order.
            for name, expected in (("db.data.svc.cluster.local", ["10.244.1.8", "10.244.2.7"]),
                                   ("web-svc.emojivoto", ["10.96.0.10"])):  # fmt: skip
                writer.write(dns.frame_tcp(dns.build_query(name, query_id=9)))
                size = int.from_bytes(await reader.readexactly(2), "big")
                assert answer(await reader.readexactly(size))[1] == expected
            # No upstream for a name that is not ours: the connection is closed, counted.
            writer.write(dns.frame_tcp(dns.build_query("example.com")))
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert _count("dns-test-pod", "tcp", "no-upstream") >= 1
        finally:
            server.close()
            await server.wait_closed()
            forwarder.close()


def test_the_rest_of_the_cluster_domain_is_answered_not_forwarded(names: DnsNames) -> None:
    # A resolver walking the search list asks `web-svc.emojivoto.cluster.local` (AAAA too);
    # forwarding it cost a resolver timeout per lookup where no upstream answers.
    for name in ("web-svc.emojivoto.cluster.local", "x.pod.cluster.local"):
        d = ask(names, name)
        assert d.reply is not None and d.result == "nxdomain", name


def test_a_deleted_pods_dns_series_leave_metrics() -> None:
    """A pod's DNS counters go from /metrics with the pod (PodListeners.close(forget_metrics=
    True) on its CNI DEL calls forget_pod): a Prometheus scraping the agent would otherwise
    keep a dead pod's series for as long as the agent runs, and every pod that ever ran on
    the node would grow it."""
    from prometheus_client import generate_latest

    from nodeagent.observe.metrics import REGISTRY, forget_pod

    for protocol, result in (("udp", "answered"), ("tcp", "no-upstream"), ("udp", "ok")):
        DNS_QUERIES.labels("shop", "gone-pod", protocol, result).inc()
    DNS_QUERIES.labels("shop", "staying-pod", "udp", "answered").inc()
    assert b'pod="gone-pod"' in generate_latest(REGISTRY)
    forget_pod("shop", "gone-pod")
    text = generate_latest(REGISTRY).decode()
    assert 'pod="gone-pod"' not in text
    assert 'nodemesh_agent_dns_queries_total{namespace="shop",pod="staying-pod"' in text
    forget_pod("shop", "staying-pod")
