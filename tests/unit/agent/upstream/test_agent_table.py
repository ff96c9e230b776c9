"""The agent's destination table: snapshots in parts, deltas, and what each reports changed."""

from __future__ import annotations

import pytest
from agent_fakes import delta, pod_pb, snapshot

from nodeagent.upstream.table import DestinationTable
from nodemesh.api import destination_pb2 as pb
from nodemesh.model import PodKey, ServiceKey


def service_pb(name: str, ip: str) -> pb.Service:
    return pb.Service(
        key=pb.ServiceKey(namespace="shop", name=name),
        cluster_ips=[ip],
        ports=[pb.ServicePort(name="http", port=80, target_port_number=8080, protocol="TCP")],
        endpoints=[pb.Endpoint(ip="10.0.0.2", ready=True)],
    )


def test_snapshot_parts_apply_only_when_complete_and_replace_the_table() -> None:
    t = DestinationTable("node1")
    t.apply(snapshot(pod_pb("old")))
    first = pb.Update(revision=5, snapshot=pb.Snapshot(services=[service_pb("web", "10.96.0.1")]))
    assert t.apply(first) is None
    assert t.pod(PodKey("shop", "old")) is not None  # still serving the previous table
    change = t.apply(pb.Update(revision=5, snapshot=pb.Snapshot(pods=[pod_pb("new")], last=True)))
    assert change is not None and change.snapshot
    assert change.pods == {PodKey("shop", "old"), PodKey("shop", "new")}
    assert set(t.pods) == {PodKey("shop", "new")}
    assert t.service_by_ip("10.96.0.1").key == ServiceKey("shop", "web")
    assert t.revision == 5 and t.synced


def test_a_broken_stream_drops_its_half_snapshot() -> None:
    t = DestinationTable("node1")
    t.apply(pb.Update(revision=1, snapshot=pb.Snapshot(pods=[pod_pb("half")])))
    t.stream_restarted()
    t.apply(snapshot(pod_pb("whole")))
    assert set(t.pods) == {PodKey("shop", "whole")}


def test_deltas_update_and_remove_pods_and_services() -> None:
    t = DestinationTable("node1")
    t.apply(snapshot(pod_pb("a"), pod_pb("b")))
    change = t.apply(delta(pod_pb("a", meshed=False), removed=("b", "never-there")))
    assert change is not None and change.pods == {PodKey("shop", "a"), PodKey("shop", "b")}
    assert not t.pods[PodKey("shop", "a")].mesh.meshed
    assert PodKey("shop", "b") not in t.pods
    t.apply(
        pb.Update(revision=3, delta=pb.Delta(services_updated=[service_pb("web", "10.96.0.9")]))
    )
    t.apply(
        pb.Update(revision=4, delta=pb.Delta(services_updated=[service_pb("web", "10.96.0.8")]))
    )
    assert t.service_by_ip("10.96.0.9") is None and t.service_by_ip("10.96.0.8") is not None
    t.apply(
        pb.Update(
            revision=5,
            delta=pb.Delta(services_removed=[pb.ServiceKey(namespace="shop", name="web")]),
        )
    )
    assert t.services == {} and t.service_by_ip("10.96.0.8") is None


def test_pods_of_other_nodes_are_not_kept() -> None:
    t = DestinationTable("node1")
    t.apply(snapshot(pod_pb("here"), pod_pb("there", node="node2")))
    assert set(t.pods) == {PodKey("shop", "here")}
    change = t.apply(delta(pod_pb("here", node="node2")))
    assert change is not None and change.pods == {PodKey("shop", "here")} and not t.pods


def test_delta_inside_a_snapshot_is_refused() -> None:
    t = DestinationTable("node1")
    t.apply(pb.Update(revision=1, snapshot=pb.Snapshot(pods=[pod_pb("a")])))
    with pytest.raises(ValueError):
        t.apply(delta(pod_pb("b")))
    with pytest.raises(ValueError):
        t.apply(pb.Update(revision=2))
