"""The cluster index: ownership, endpoints, mesh settings, and the changes it reports."""

from __future__ import annotations

import copy

import cp_objects as k
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.index import (
    ClusterIndex,
    PodRemoved,
    PodUpdated,
    ServiceUpdated,
    WorkloadUpdated,
)
from controlplane.sources.events import EventType, KindSynced, ObjectChanged
from nodemesh.model import InboundMode, PodKey, PortSet, PortSpecError, ServiceKey, WorkloadRef


def add(index: ClusterIndex, obj: dict, type_: EventType = EventType.ADDED) -> list:
    return index.apply(ObjectChanged(type_, obj["kind"], obj))


def loaded(objs: list[dict], *, trust_domain: str = "cluster.local") -> ClusterIndex:
    index = ClusterIndex(trust_domain=trust_domain)
    for obj in objs:
        add(index, obj)
    return index


WEB = WorkloadRef("Deployment", "emojivoto", "web")


def test_pods_resolve_to_deployment_through_replicaset_and_services_to_endpoints() -> None:
    index = loaded(k.web_app(replicas=2), trust_domain="lab.test")
    pod = index.pods[PodKey("emojivoto", "web-5d8f7-0")]
    assert pod.workload == WEB
    assert pod.identity == "spiffe://lab.test/ns/emojivoto/sa/web"
    assert pod.mesh.meshed and pod.mesh.inbound_mode is InboundMode.PERMISSIVE
    assert index.workloads[WEB].identities == ("spiffe://lab.test/ns/emojivoto/sa/web",)
    svc = index.services[ServiceKey("emojivoto", "web")]
    assert svc.cluster_ips == ("10.96.0.10",)
    assert [(e.ip, e.ready, e.workload, e.meshed) for e in svc.endpoints] == [
        ("10.244.1.10", True, WEB, True),
        ("10.244.2.11", True, WEB, True),
    ]
    assert svc.endpoints[0].identity == pod.identity
    assert [p.key.name for p in index.pods_on_node("node2")] == ["web-5d8f7-1"]
    assert index.pod_by_ip("10.244.2.11").key.name == "web-5d8f7-1"
    assert index.nodes["node1"].pod_cidr == "10.244.1.0/24"


def test_pod_seen_before_its_replicaset_is_corrected_when_the_replicaset_arrives() -> None:
    objs = k.web_app(replicas=1)
    rs = next(o for o in objs if o["kind"] == "ReplicaSet")
    index = loaded([o for o in objs if o is not rs])
    assert index.pods[PodKey("emojivoto", "web-5d8f7-0")].workload.kind == "ReplicaSet"
    changes = add(index, rs)
    updated = [c.pod.workload for c in changes if isinstance(c, PodUpdated)]
    assert updated == [WEB]
    assert index.services[ServiceKey("emojivoto", "web")].endpoints[0].workload == WEB


def test_statefulset_daemonset_and_bare_pods_are_their_own_workloads() -> None:
    objs = [
        k.namespace("db"),
        k.pod("db", "pg-0", node="node1", ip="10.244.1.5", owner=("StatefulSet", "pg")),
        k.pod("db", "agent-x", node="node1", ip="10.244.1.6", owner=("DaemonSet", "agent")),
        k.pod("db", "debug", node="node1", ip="10.244.1.7"),
    ]
    index = loaded(objs)
    assert {p.workload for p in index.pods.values()} == {
        WorkloadRef("StatefulSet", "db", "pg"),
        WorkloadRef("DaemonSet", "db", "agent"),
        WorkloadRef("Pod", "db", "debug"),
    }


def test_not_ready_endpoint_and_scale_down_are_reported() -> None:
    objs = k.web_app(replicas=2)
    index = loaded(objs)
    pods = [o for o in objs if o["kind"] == "Pod"]
    pods[1]["status"]["conditions"][0]["status"] = "False"
    changes = add(index, k.endpointslice("emojivoto", "web", pods), EventType.MODIFIED)
    (svc_change,) = [c for c in changes if isinstance(c, ServiceUpdated)]
    assert [e.ready for e in svc_change.service.endpoints] == [True, False]

    changes = add(index, pods[1], EventType.DELETED)
    assert PodRemoved(PodKey("emojivoto", "web-5d8f7-1"), "node2") in changes
    assert index.pods_on_node("node2") == []
    assert index.pod_by_ip("10.244.2.11") is None


def test_meshing_a_namespace_updates_its_pods_and_the_endpoints_that_point_at_them() -> None:
    objs = k.web_app(replicas=1)
    objs[0] = k.namespace("emojivoto", meshed=False)
    index = loaded(objs)
    assert not index.services[ServiceKey("emojivoto", "web")].endpoints[0].meshed
    assert index.services[ServiceKey("emojivoto", "web")].endpoints[0].identity == ""
    changes = add(index, k.namespace("emojivoto", meshed=True), EventType.MODIFIED)
    kinds = sorted(type(c).__name__ for c in changes)
    assert kinds == ["PodUpdated", "ServiceUpdated"]
    assert index.services[ServiceKey("emojivoto", "web")].endpoints[0].meshed
    assert index.namespaces() == {"emojivoto": True}


def test_pod_annotations_override_the_namespace_and_bad_values_are_reported() -> None:
    ns = k.namespace(
        "shop",
        annotations={"nodemesh.io/inbound-mode": "strict", "nodemesh.io/opaque-ports": "3306"},
    )
    good = k.pod(
        "shop",
        "a",
        node="node1",
        ip="10.244.1.2",
        annotations={
            "nodemesh.io/skip-inbound-ports": "9090, 8000-8010",
            "nodemesh.io/opaque-ports": "5432",
            "nodemesh.io/allow-inbound-udp-ports": "5353, 9000-9001",
        },
    )
    bad = k.pod(
        "shop",
        "b",
        node="node1",
        ip="10.244.1.3",
        annotations={
            "nodemesh.io/inbound-mode": "lenient",
            "nodemesh.io/skip-outbound-ports": "80,70000",
            "nodemesh.io/allow-inbound-udp-ports": "dns",
        },
    )
    opted_out = k.pod(
        "shop", "c", node="node1", ip="10.244.1.4", labels={"nodemesh.io/mesh": "disabled"}
    )
    host = k.pod("shop", "d", node="node1", ip="172.18.0.1", host_network=True)
    index = loaded([ns, good, bad, opted_out, host])
    a = index.pods[PodKey("shop", "a")].mesh
    assert a.inbound_mode is InboundMode.STRICT
    assert 5432 in a.opaque_ports and 3306 not in a.opaque_ports
    assert 8005 in a.skip_inbound_ports and 9090 in a.skip_inbound_ports
    assert 8011 not in a.skip_inbound_ports
    assert 5353 in a.allow_inbound_udp_ports and 9001 in a.allow_inbound_udp_ports
    assert 5354 not in a.allow_inbound_udp_ports
    b = index.pods[PodKey("shop", "b")].mesh
    assert b.inbound_mode is InboundMode.STRICT  # fell back to the namespace's value
    assert not b.skip_outbound_ports
    assert not b.allow_inbound_udp_ports
    assert len(b.errors) == 3
    assert "'lenient' is not one of permissive, strict" in b.errors[0]
    assert "70000 is outside 1-65535" in b.errors[1]
    assert "pod annotation nodemesh.io/allow-inbound-udp-ports" in b.errors[2]
    assert "'dns'" in b.errors[2]
    assert not index.pods[PodKey("shop", "c")].mesh.meshed
    assert not index.pods[PodKey("shop", "d")].mesh.meshed
    assert index.pod_by_ip("172.18.0.1") is None


def test_malformed_objects_are_skipped_and_counted_and_the_index_keeps_working() -> None:
    index = loaded(k.web_app(replicas=1))
    broken = k.service("emojivoto", "broken", ip="10.96.0.99")
    broken["spec"]["ports"] = [{"name": "http", "port": "eighty"}]
    assert add(index, broken) == []
    assert index.bad_objects == 1
    assert ServiceKey("emojivoto", "broken") not in index.services
    fixed = copy.deepcopy(broken)
    fixed["spec"]["ports"] = [{"name": "http", "port": 80}]
    changes = add(index, fixed, EventType.MODIFIED)
    assert [type(c).__name__ for c in changes] == ["ServiceUpdated"]


def test_deployment_with_no_pods_still_has_its_template_identity() -> None:
    index = loaded([k.namespace("x"), k.deployment("x", "api", replicas=0, sa="api-sa")])
    wl = index.workloads[WorkloadRef("Deployment", "x", "api")]
    assert wl.identities == ("spiffe://cluster.local/ns/x/sa/api-sa",)
    changes = add(index, k.deployment("x", "api"), EventType.DELETED)
    assert [type(c).__name__ for c in changes] == ["WorkloadRemoved"]


def test_synced_only_after_every_kind_was_listed() -> None:
    index = ClusterIndex()
    kinds = ("Namespace", "Node", "Deployment", "ReplicaSet", "Pod", "Service", "InboundPolicy")
    for kind in (*kinds, "HTTPRoute", "GRPCRoute"):
        index.apply(KindSynced(kind))
    assert not index.synced
    index.apply(KindSynced("EndpointSlice"))
    assert index.synced


def test_workload_update_is_emitted_when_a_pod_with_a_new_identity_appears() -> None:
    index = loaded(k.web_app(replicas=1))
    extra = k.pod(
        "emojivoto",
        "web-5d8f7-9",
        node="node1",
        ip="10.244.1.99",
        owner=("ReplicaSet", "web-5d8f7"),
        sa="other",
    )
    changes = add(index, extra)
    (wl,) = [c.workload for c in changes if isinstance(c, WorkloadUpdated)]
    assert wl.identities == (
        "spiffe://cluster.local/ns/emojivoto/sa/other",
        "spiffe://cluster.local/ns/emojivoto/sa/web",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("80,abc", "'abc' is not a port number"),
        ("0", "0 is outside 1-65535"),
        ("90-80", "range end 80 is below its start 90"),
        ("8000-", "'' is not a port number"),
    ],
)
def test_port_lists_with_bad_items_say_which_item(text: str, message: str) -> None:
    with pytest.raises(PortSpecError, match=message):
        PortSet.parse(text)


@given(st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 50)), max_size=20))
def test_port_sets_contain_exactly_the_ports_listed(items: list[tuple[int, int]]) -> None:
    text = ",".join(f"{a}-{min(a + n, 65535)}" if n else str(a) for a, n in items)
    ports = PortSet.parse(text)
    expected = {p for a, n in items for p in range(a, min(a + n, 65535) + 1)}
    for probe in expected | {1, 65535, 100, 8080}:
        assert (probe in ports) == (probe in expected)
    assert PortSet.parse(str(ports)) == ports


def test_a_service_annotated_router_is_router_compatible_and_reaches_the_agents_so() -> None:
    """nodemesh.io/router: "true" on a Service (a central router's, kept without its pods):
    the agents serve it as a router (nodeagent.proxy.router); any other value is not one."""
    from nodemesh import destination_codec as codec

    router = k.service("infra", "router", ip="10.96.0.40")
    router["metadata"]["annotations"] = {"nodemesh.io/router": "true"}
    other = k.service("infra", "other", ip="10.96.0.41")
    other["metadata"]["annotations"] = {"nodemesh.io/router": "yes please"}
    index = loaded([router, other, k.service("infra", "plain", ip="10.96.0.42")])
    got = {key.name: svc.router for key, svc in index.services.items()}
    assert got == {"router": True, "other": False, "plain": False}
    svc = index.services[ServiceKey("infra", "router")]
    assert codec.service_from_pb(codec.service_to_pb(svc)) == svc
