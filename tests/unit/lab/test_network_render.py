"""The kube-proxy stand-in's rules and the per-pod name files, rendered as text."""

from __future__ import annotations

from nodemesh.lab.network import (
    ServiceRoute,
    render_hosts,
    render_resolv,
    render_service_rules,
    service_routes,
)

SVC = {
    "metadata": {"name": "web-svc", "namespace": "emojivoto"},
    "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 80, "protocol": "TCP"}]},
}
SLICE = {
    "metadata": {"namespace": "emojivoto", "labels": {"kubernetes.io/service-name": "web-svc"}},
    "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
    "endpoints": [
        {"addresses": ["10.244.1.2"], "conditions": {"ready": True}},
        {"addresses": ["10.244.2.2"], "conditions": {"ready": True}},
        {"addresses": ["10.244.2.3"], "conditions": {"ready": False}},
    ],
}


def test_only_ready_endpoints_are_routed() -> None:
    (route,) = service_routes([SVC], [SLICE])
    assert route == ServiceRoute(
        "10.96.0.11", 80, "TCP", (("10.244.1.2", 8080), ("10.244.2.2", 8080))
    )


def test_rules_pick_uniformly_and_masquerade_hairpin() -> None:
    text = render_service_rules(service_routes([SVC], [SLICE]))
    lines = text.splitlines()
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    dnat = [ln for ln in lines if "DNAT" in ln]
    assert "--probability 0.50000000000" in dnat[0] and "10.244.1.2:8080" in dnat[0]
    assert "statistic" not in dnat[1] and "10.244.2.2:8080" in dnat[1]
    assert "-A NM-LAB-HAIRPIN -s 10.244.1.2/32 -d 10.244.1.2/32 -j MASQUERADE" in lines


def test_no_endpoints_no_dnat() -> None:
    text = render_service_rules(service_routes([SVC], []))
    assert "DNAT" not in text


def test_hosts_names_services_the_way_cluster_dns_would() -> None:
    other = {"metadata": {"name": "db", "namespace": "data"}, "spec": {"clusterIP": "10.96.0.12"}}
    text = render_hosts(pod_ip="10.244.1.2", pod_name="web-1", namespace="emojivoto",
                        services=[SVC, other])  # fmt: skip
    assert (
        "10.96.0.11\tweb-svc.emojivoto.svc.cluster.local web-svc.emojivoto.svc web-svc.emojivoto web-svc"
        in text
    )
    # A short name only resolves inside its own namespace.
    assert "10.96.0.12\tdb.data.svc.cluster.local db.data.svc db.data\n" in text
    assert "10.244.1.2\tweb-1" in text
    assert "search emojivoto.svc.cluster.local svc.cluster.local cluster.local" in render_resolv(
        "emojivoto"
    )
