"""Routing from the destination table: VIPs to ready endpoints, pod IPs, the unknown."""

from __future__ import annotations

from dp_tables import endpoint, pod, service, table

from nodeagent.proxy.routing import Routes
from nodemesh import destination_codec as codec
from nodemesh.api import destination_pb2 as pb


def test_a_vip_routes_to_its_ready_endpoints_on_their_named_port() -> None:
    api = service(
        "api",
        "10.96.0.10",
        80,
        [
            endpoint("10.244.2.5", 8080),
            endpoint("10.244.2.6", 9090),
            endpoint("10.244.2.7", 8080, ready=False),
        ],
    )
    route = Routes(table([api])).resolve("10.96.0.10", 80)
    assert route.known and route.service is not None and route.service.key.name == "api"
    assert sorted(t.key for t in route.targets) == [("10.244.2.5", 8080), ("10.244.2.6", 9090)]
    assert all(t.meshed and t.identity.endswith("/sa/api") for t in route.targets)


def test_a_vip_without_ready_endpoints_is_refused_and_an_unknown_port_passes() -> None:
    routes = Routes(
        table([service("api", "10.96.0.10", 80, [endpoint("10.244.2.5", 80, ready=False)])])
    )
    assert routes.resolve("10.96.0.10", 80).no_endpoints
    other = routes.resolve("10.96.0.10", 81)
    assert not other.known and not other.no_endpoints


def test_pod_ips_of_other_nodes_and_headless_services_route_to_that_pod() -> None:
    headless = service("db", "", 5432, [endpoint("10.244.2.9", 5432, meshed=False)])
    routes = Routes(table([headless]))
    (target,) = routes.resolve("10.244.2.9", 5432).targets
    assert target.key == ("10.244.2.9", 5432) and not target.meshed and target.identity == ""


def test_local_pods_route_with_their_identity_and_unknown_addresses_pass_through() -> None:
    routes = Routes(table([], [pod("web-1", "10.244.1.3")]))
    (target,) = routes.resolve("10.244.1.3", 8080).targets
    assert target.meshed and target.identity.endswith("/sa/web")
    assert not routes.resolve("192.0.2.1", 443).known


def test_opaque_service_ports_skip_detection() -> None:
    routes = Routes(
        table([service("db", "10.96.0.20", 6000, [endpoint("10.244.2.9", 6000)], opaque="6000")])
    )
    assert routes.resolve("10.96.0.20", 6000).opaque


def test_the_index_follows_table_deltas() -> None:
    t = table([service("api", "10.96.0.10", 80, [endpoint("10.244.2.5", 80)])])
    routes = Routes(t)
    assert routes.endpoint_by_ip("10.244.2.5") is not None
    moved = service("api", "10.96.0.10", 80, [endpoint("10.244.2.8", 80)])
    t.apply(pb.Update(revision=2, delta=pb.Delta(services_updated=[codec.service_to_pb(moved)])))
    assert routes.endpoint_by_ip("10.244.2.5") is None
    assert [x.ip for x in routes.resolve("10.96.0.10", 80).targets] == ["10.244.2.8"]


def test_peers_are_interned_so_the_aggregate_fast_path_hits() -> None:
    from nodeagent.observe import peers

    a = peers.peer("10.244.1.5", "shop", "web-1", "Deployment", "web")
    assert peers.peer("10.244.1.5", "shop", "web-1", "Deployment", "web") is a
    assert peers.peer("10.244.1.6", "shop", "web-2", "Deployment", "web") is not a
    assert a.workload == "web" and a.service == "" and a.identity == ""
