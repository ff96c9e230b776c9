"""What the lab's controllers derive: ReplicaSets, Pods, EndpointSlices, scheduling, ClusterIPs."""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh.lab import objects
from nodemesh.lab.manifests import parse

DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, uid: d-1}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      containers:
      - name: web
        command: ["python3"]
        ports: [{name: http, containerPort: 8000}]
"""
NODES = [objects.NodeInfo("node1", {"zone": "a"}), objects.NodeInfo("node2", {"zone": "b"})]


def deployment() -> dict[str, Any]:
    obj = parse(DEPLOY, source="t")[0].obj
    obj["metadata"]["uid"] = "d-1"
    return obj


def test_replicaset_and_pods_carry_owner_references_and_hash() -> None:
    dep = deployment()
    rs = objects.replicaset_for(dep)
    h = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{h}"
    assert rs["metadata"]["ownerReferences"][0] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-1",
        "controller": True, "blockOwnerDeletion": True,
    }  # fmt: skip
    pod = objects.pod_from_template(rs, name=f"web-{h}-abcde")
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert pod["metadata"]["labels"] == {"app": "web", "pod-template-hash": h}
    assert pod["spec"]["serviceAccountName"] == "web"
    # The same template gives the same hash; a changed one another.
    assert objects.replicaset_for(dep)["metadata"]["name"] == rs["metadata"]["name"]
    dep["spec"]["template"]["spec"]["containers"][0]["command"] = ["python3", "-V"]
    assert objects.replicaset_for(dep)["metadata"]["name"] != rs["metadata"]["name"]


def test_pods_spread_over_nodes() -> None:
    rs = objects.replicaset_for(deployment())
    placed: list[dict[str, Any]] = []
    for i in range(4):
        pod = objects.pod_from_template(rs, name=f"p{i}")
        pod["spec"]["nodeName"] = objects.schedule(pod, nodes=NODES, pods=placed)
        placed.append(pod)
    assert [p["spec"]["nodeName"] for p in placed] == ["node1", "node2", "node1", "node2"]


def test_node_name_and_selector_are_honoured() -> None:
    rs = objects.replicaset_for(deployment())
    pod = objects.pod_from_template(rs, name="p")
    pod["spec"]["nodeSelector"] = {"zone": "b"}
    assert objects.schedule(pod, nodes=NODES, pods=[]) == "node2"
    pod["spec"]["nodeSelector"] = {"zone": "c"}
    with pytest.raises(objects.SchedulingError, match="no node matches"):
        objects.schedule(pod, nodes=NODES, pods=[])
    pod["spec"]["nodeName"] = "node9"
    with pytest.raises(objects.SchedulingError, match="node 'node9' does not exist"):
        objects.schedule(pod, nodes=NODES, pods=[])


def test_endpointslice_lists_selected_pods_with_readiness_and_named_target_port() -> None:
    rs = objects.replicaset_for(deployment())
    pods = []
    for i, ready in enumerate([True, False]):
        p = objects.pod_from_template(rs, name=f"web-{i}", node="node1")
        p["status"]["podIP"] = f"10.244.1.{i + 2}"
        objects.set_ready(p, ready)
        pods.append(p)
    other = objects.pod_from_template(rs, name="other", node="node1")
    other["metadata"]["labels"] = {"app": "other"}
    other["status"]["podIP"] = "10.244.1.9"
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "uid": "s-1"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }  # fmt: skip
    es = objects.endpointslice_for(svc, [*pods, other], name="web-s1")
    assert es["metadata"]["labels"]["kubernetes.io/service-name"] == "web"
    assert [(e["addresses"], e["conditions"]["ready"]) for e in es["endpoints"]] == [
        (["10.244.1.2"], True),
        (["10.244.1.3"], False),
    ]
    assert es["ports"] == [{"name": "", "port": 8000, "protocol": "TCP"}]
    assert es["endpoints"][0]["targetRef"]["name"] == "web-0"


def test_cluster_ips_are_unique_and_in_range() -> None:
    used: list[str] = []
    for _ in range(5):
        used.append(objects.allocate_cluster_ip(used))
    assert len(set(used)) == 5
    assert all(ip.startswith("10.96.") for ip in used)
    assert "10.96.0.10" not in used and "10.96.0.1" not in used
