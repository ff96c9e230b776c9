"""Where router mode sends a request (nodeagent.proxy.routerdest): Service names as the cluster
DNS knows them, VIPs and pod IPs of the mesh; 502 for anything else, 403 for ports it may not use."""

from __future__ import annotations

import pytest
from dp_tables import endpoint, pod, service, table

from nodeagent.protocol.explicitproxy import ProxyRequestError
from nodeagent.proxy.routerdest import resolve
from nodeagent.proxy.routing import Routes


@pytest.fixture
def mesh():
    t = table(
        [
            service("api", "10.96.0.10", 80, [endpoint("10.244.2.5", 8080)]),
            service("db", "", 5432, [endpoint("10.244.2.6", 5432)]),
        ],
        [pod("web-1", "10.244.1.7")],
    )
    return t, Routes(t)


def go(mesh, host: str, port: int, caller: str = "shop") -> tuple[str, int]:
    t, routes = mesh
    return resolve(
        t, routes, host=host, port=port, caller_namespace=caller, cluster_domain="k8s.local"
    )


@pytest.mark.parametrize(
    "host",
    ["api", "api.shop", "api.shop.svc", "api.shop.svc.k8s.local", "api.shop.svc.k8s.local.",
     "10.96.0.10"],
)  # fmt: skip
def test_service_names_and_the_vip_route_as_a_captured_connection_to_the_vip(mesh, host) -> None:
    assert go(mesh, host, 80) == ("10.96.0.10", 80)


def test_pod_ips_of_the_mesh_are_reached_as_they_are(mesh) -> None:
    assert go(mesh, "10.244.2.5", 8080) == ("10.244.2.5", 8080)  # an endpoint
    assert go(mesh, "10.244.1.7", 9000) == ("10.244.1.7", 9000)  # a pod of this node


@pytest.mark.parametrize(
    ("host", "port", "caller", "status", "says"),
    [
        ("api", 80, "other", 502, "unknown host 'api'"),  # short names are the caller's ns
        ("example.com", 80, "shop", 502, "unknown host 'example.com'"),
        ("api.shop.svc.cluster.local", 80, "shop", 502, "unknown host"),  # not this domain
        ("10.9.9.9", 80, "shop", 502, "neither a Service nor a pod"),
        ("db.shop", 5432, "shop", 502, "headless"),
        ("api.shop", 8080, "shop", 403, "port 8080 is not a TCP port of Service shop/api"),
        ("10.96.0.10", 22, "shop", 403, "(its ports: 80)"),
        ("10.244.2.5", 4143, "shop", 403, "port 4143 is the mesh agent's own"),
        ("api", 4144, "shop", 403, "the mesh agent's own"),
    ],
)
def test_what_the_router_may_not_reach_is_answered_clearly(
    mesh, host, port, caller, status, says
) -> None:
    with pytest.raises(ProxyRequestError) as err:
        go(mesh, host, port, caller)
    assert err.value.status == status
    assert says in err.value.reason


def test_a_name_without_port_reaches_a_services_only_port(mesh) -> None:
    t = table([service("echo", "10.96.0.11", 8080, [endpoint("10.244.2.7", 8080)])], [])
    routes = Routes(t)

    def to(port: int, given: bool) -> tuple[str, int]:
        return resolve(t, routes, host="echo.shop", port=port, caller_namespace="x",
                       cluster_domain="k8s.local", port_given=given)  # fmt: skip

    assert to(80, False) == ("10.96.0.11", 8080)  # `Host: echo.shop` names the Service
    with pytest.raises(ProxyRequestError, match="port 80 is not a TCP port"):
        to(80, True)  # `Host: echo.shop:80` names a port it does not have
    assert go(mesh, "api.shop", 80) == ("10.96.0.10", 80)  # port 80 where there is one
