"""InboundPolicy in the control plane: read from both sources (the lab's directory and the
Kubernetes API, with or without the CRD installed), compiled per node and handed only to the
agents of the nodes that host a selected pod, as a snapshot and then as deltas."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from pathlib import Path

import cp_objects as k
import pytest
from fake_apiserver import FakeApiServer
from kubernetes import client

from controlplane.destination import DestinationHub
from controlplane.index import ClusterIndex
from controlplane.sources.events import EventType, KindSynced, ObjectChanged
from controlplane.sources.kube import KubeSource
from controlplane.sources.local import LocalSource
from nodemesh import authz
from nodemesh.api import destination_pb2 as pb
from nodemesh.authz_codec import policy_from_pb
from nodemesh.backoff import Backoff
from nodemesh.tasks import spawn

NS = "emojivoto"


def policy(name: str = "web-authz", *, default: str = "deny", app: str = "web") -> dict:
    return {
        "apiVersion": authz.API_VERSION,
        "kind": authz.KIND,
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "1", "uid": f"u-{name}"},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "ports": [8080],
            "default": default,
            "rules": [{"from": {"serviceAccounts": [{"name": "vote-bot"}]}}],
        },
    }


def ev(obj: dict, kind: EventType = EventType.MODIFIED) -> ObjectChanged:
    return ObjectChanged(kind, obj["kind"], obj)


def cluster() -> tuple[ClusterIndex, list[dict]]:
    """web-0 on node1, web-1 on node2, nothing of web on node3."""
    index = ClusterIndex()
    objs = k.web_app(NS, replicas=2, nodes=2) + [k.node(3)]
    for obj in objs:
        index.apply(ev(obj))
    return index, objs


def snapshot_policies(hub: DestinationHub, node: str) -> list[authz.Policy]:
    whole = pb.Snapshot()
    for part in hub.snapshot(node):
        whole.MergeFrom(part.snapshot)
    return [policy_from_pb(p) for p in whole.authz_policies]


def drain(sub) -> pb.Delta:
    out = pb.Delta()
    while not sub.queue.empty():
        update = sub.queue.get_nowait()
        assert isinstance(update, pb.Update)
        out.MergeFrom(update.delta)
    return out


def test_the_snapshot_carries_a_policy_only_to_the_nodes_of_its_pods() -> None:
    index, _ = cluster()
    index.apply(ev(policy()))
    hub = DestinationHub(index)
    (on1,) = snapshot_policies(hub, "node1")
    (on2,) = snapshot_policies(hub, "node2")
    assert snapshot_policies(hub, "node3") == []
    assert [p.name for p in on1.pods] == ["web-5d8f7-0"]
    assert [p.name for p in on2.pods] == ["web-5d8f7-1"]
    assert str(on1.key) == "emojivoto/web-authz" and on1.default is authz.Default.DENY
    (rule,) = on1.rules
    assert rule.clients is not None
    assert rule.clients.identities == ("spiffe://cluster.local/ns/emojivoto/sa/vote-bot",)
    assert on1.cluster_prefix == "spiffe://cluster.local/"


def test_policy_and_pod_changes_reach_only_the_agents_that_need_them() -> None:
    index, objs = cluster()
    hub = DestinationHub(index)
    sub1, _ = hub.subscribe("node1", "t")
    sub3, _ = hub.subscribe("node3", "t")

    def publish(obj: dict, kind: EventType = EventType.MODIFIED) -> None:
        hub.publish(index.apply(ev(obj, kind)), index.revision)

    pol = policy()
    publish(pol)
    (added,) = drain(sub1).authz_policies_updated
    assert policy_from_pb(added).default is authz.Default.DENY
    assert drain(sub3).ByteSize() == 0  # node3 hosts no web pod: it hears nothing

    changed = copy.deepcopy(pol)
    changed["spec"]["default"] = "all-authenticated"
    changed["metadata"]["resourceVersion"] = "2"
    publish(changed)
    (updated,) = drain(sub1).authz_policies_updated
    assert policy_from_pb(updated).default is authz.Default.ALL_AUTHENTICATED

    # A spec the index cannot read keeps the last readable one in force (never opens up).
    broken = copy.deepcopy(changed)
    broken["spec"]["default"] = "nobody"
    broken["metadata"]["resourceVersion"] = "3"
    publish(broken)
    assert not drain(sub1).authz_policies_updated and index.bad_objects == 1
    assert snapshot_policies(hub, "node1")[0].default is authz.Default.ALL_AUTHENTICATED

    # web-0 relabelled out of the selector: node1 no longer needs the policy.
    web0 = next(o for o in objs if o["metadata"]["name"] == "web-5d8f7-0")
    relabelled = copy.deepcopy(web0)
    relabelled["metadata"]["labels"] = {"app": "other"}
    relabelled["metadata"]["resourceVersion"] = "9"
    publish(relabelled)
    delta = drain(sub1)
    assert [(k.namespace, k.name) for k in delta.authz_policies_removed] == [(NS, "web-authz")]
    publish(web0)  # back in
    assert len(drain(sub1).authz_policies_updated) == 1

    publish(changed, EventType.DELETED)
    assert [k.name for k in drain(sub1).authz_policies_removed] == ["web-authz"]
    assert drain(sub3).ByteSize() == 0


async def test_the_lab_directory_source_reads_policies(tmp_path: Path) -> None:
    lab = k.LabDir(tmp_path)
    pol = lab.put(policy())
    src = LocalSource(tmp_path, interval=0.05)
    it = src.events()
    seen = []
    async with asyncio.timeout(10):
        while not any(isinstance(e, KindSynced) and e.kind == authz.KIND for e in seen):
            seen.append(await anext(it))
        (added,) = [e for e in seen if isinstance(e, ObjectChanged)]
        assert added.kind == authz.KIND and added.obj["spec"] == pol["spec"]
        lab.delete(authz.KIND, NS, "web-authz")
        while True:
            e = await anext(it)
            if isinstance(e, ObjectChanged):
                assert e.type is EventType.DELETED and e.kind == authz.KIND
                break
    await it.aclose()


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def api(apiserver: FakeApiServer) -> Iterator[client.ApiClient]:
    cfg = client.Configuration()
    cfg.host = apiserver.host
    with client.ApiClient(cfg) as api_client:
        yield api_client


async def _follow_policies(api: client.ApiClient, until) -> list:
    src = KubeSource(api, kinds=(authz.KIND,), backoff=lambda: Backoff(first=0.05, cap=0.2))
    it = src.events()
    seen: list = []
    try:
        async with asyncio.timeout(10):
            while not until(seen):
                seen.append(await anext(it))
    finally:
        await it.aclose()
    return seen


async def test_the_kubernetes_source_lists_and_watches_policies(apiserver, api) -> None:
    apiserver.apply(policy("first"))
    index = ClusterIndex()

    def has(name: str):
        return lambda seen: any(
            isinstance(e, ObjectChanged) and e.obj["metadata"]["name"] == name for e in seen
        )

    async def later() -> None:
        await asyncio.sleep(0.3)
        apiserver.apply(policy("second", default="all"))

    task = spawn(later(), name="apply-second-policy")
    seen = await _follow_policies(api, has("second"))
    await task
    for e in seen:
        index.apply(e)
    assert sorted(str(k) for k in index.policies) == ["emojivoto/first", "emojivoto/second"]
    assert index.policies[authz.PolicyKey(NS, "second")].default is authz.Default.ALL
    first = next(e for e in seen if isinstance(e, ObjectChanged))
    assert first.obj["apiVersion"] == authz.API_VERSION
    assert any(r.kind == authz.KIND and r.watch for r in apiserver.requests)


async def test_without_the_crd_the_kind_counts_as_listed_and_empty(apiserver, api) -> None:
    apiserver.crds = False  # an API server that does not serve the kind answers 404
    seen = await _follow_policies(api, lambda seen: any(isinstance(e, KindSynced) for e in seen))
    assert seen == [KindSynced(authz.KIND)]  # the index is not held "not synced" forever


def test_the_agent_table_follows_the_stream_and_keeps_policies_across_restarts() -> None:
    from nodeagent.upstream.table import DestinationTable
    from nodemesh.model import PodKey

    index, _ = cluster()
    index.apply(ev(policy()))
    hub = DestinationHub(index)
    sub, snapshot = hub.subscribe("node1", "t")
    table = DestinationTable("node1")
    for part in snapshot:
        table.apply(part)
    web0 = PodKey(NS, "web-5d8f7-0")
    (p,) = table.authz.applying(web0, 8080)
    assert str(p.key) == "emojivoto/web-authz"
    assert table.authz.applying(web0, 9090) == []  # the policy names port 8080 only
    bot = "spiffe://cluster.local/ns/emojivoto/sa/vote-bot"
    assert authz.decide_connection([p], identity=bot, ip="10.244.1.9").allowed
    assert not authz.decide_connection([p], identity="", ip="10.244.1.9").allowed
    # What the agent saves for its next start holds the policy too (fail closed on restart).
    restarted = DestinationTable("node1")
    restarted.apply(pb.Update(revision=1, snapshot=table.snapshot()))
    assert restarted.authz.applying(web0, 8080) == [p]
    hub.publish(index.apply(ev(policy(), EventType.DELETED)), index.revision)
    while not sub.queue.empty():
        table.apply(sub.queue.get_nowait())
    assert table.authz.applying(web0, 8080) == []
