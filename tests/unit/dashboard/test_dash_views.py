"""The /api routes and pages show what the control plane's public API says about a real index
and telemetry store (served over loopback gRPC), joined the way a user reads them."""

from __future__ import annotations

import asyncio

import pytest
from dash_cluster import NS, add_routes, routed

SPIFFE = "spiffe://cluster.local/ns/emojivoto/sa/"


def emojivoto_traffic(cluster) -> None:  # type: ignore[no-untyped-def]
    t = cluster.traffic
    t.calls("vote-bot", "web", ok=60)
    t.calls("web", "emoji", ok=120)
    t.calls("web", "voting", ok=54, failed=6, latency_us=8000, node="node2")
    cluster.clock.now += 10  # the bucket is complete: queries see it


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in rows}


async def test_deployments_table_carries_the_golden_metrics(cluster, dashboard) -> None:
    emojivoto_traffic(cluster)
    rsp = await dashboard.http.get("/api/deployments", params={"namespace": NS})
    assert rsp.status_code == 200
    rows = by_name(rsp.json()["deployments"])
    assert set(rows) == {"web", "emoji", "voting", "vote-bot", "web-api"}
    voting = rows["voting"]
    assert voting["requests"] == 60
    assert voting["success_rate"] == pytest.approx(0.9)
    assert voting["rps"] == pytest.approx(60 / 60)
    assert 7 <= voting["latency_p50_ms"] <= 9
    assert rows["emoji"]["success_rate"] == 1.0
    assert rows["web"]["total_pods"] == 2
    # vote-bot serves nothing: a row with no requests and no success rate, not a made-up 100%.
    assert rows["vote-bot"]["requests"] == 0 and rows["vote-bot"]["success_rate"] is None

    everywhere = (await dashboard.http.get("/api/deployments")).json()
    assert everywhere["namespace"] == "" and len(everywhere["deployments"]) == 5


async def test_deployment_detail_has_edges_identities_pods_and_history(cluster, dashboard) -> None:
    emojivoto_traffic(cluster)
    await asyncio.sleep(0.5)  # a few history samples (every 0.2 s in these tests)
    rsp = await dashboard.http.get(f"/api/namespaces/{NS}/deployments/web", params={"window": 30})
    assert rsp.status_code == 200
    d = rsp.json()
    assert d["window"] == 30
    assert d["stat"]["requests"] == 60
    assert d["identities"] == [SPIFFE + "web"]
    assert d["nodes"] == ["node1", "node2"]
    assert d["pods"] == 2 and d["ready_pods"] == 2
    # Only web's own pods: web-api's pod shares the prefix and must not be listed.
    assert sorted(p["name"] for p in d["pod_rows"]) == ["web-5d8f7-p0xyz", "web-5d8f7-p1xyz"]
    inbound = {e["src"]: e for e in d["inbound"]}
    assert set(inbound) == {"vote-bot"}
    assert inbound["vote-bot"]["src_identity"] == SPIFFE + "vote-bot"
    assert inbound["vote-bot"]["tls"] is True
    outbound = {e["dst"]: e for e in d["outbound"]}
    assert set(outbound) == {"emoji", "voting"}
    assert outbound["voting"]["success_rate"] == pytest.approx(0.9)
    assert outbound["voting"]["dst_identity"] == SPIFFE + "voting"
    assert outbound["emoji"]["success_rate"] == 1.0
    h = d["history"]
    assert len(h["t"]) >= 2 and h["t"] == sorted(h["t"])
    assert h["rps"][-1] == pytest.approx(60 / 10)  # samples cover the last 10 s bucket
    assert len(h["rps"]) == len(h["success_rate"]) == len(h["latency_p99_ms"]) == len(h["t"])


async def _history_until(dashboard, done) -> dict:  # type: ignore[no-untyped-def,type-arg]
    """The deployment page's history once `done(history)` holds (the sampler runs on its own
    period: waiting for what it took, not a fixed sleep, which a loaded machine outran)."""
    for _ in range(200):
        h = (await dashboard.http.get(f"/api/namespaces/{NS}/deployments/emoji")).json()
        if done(h["history"]):
            return h["history"]  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"the history never got there: {h['history']}")


async def test_history_shows_traffic_changing(cluster, dashboard) -> None:
    await _history_until(dashboard, lambda h: len(h["t"]) >= 1)  # the quiet start
    cluster.traffic.calls("web", "emoji", ok=10)
    cluster.clock.now += 10
    await _history_until(dashboard, lambda h: h["rps"][-1] == pytest.approx(1.0))
    cluster.traffic.calls("web", "emoji", ok=300, failed=100)
    cluster.clock.now += 10
    h = await _history_until(dashboard, lambda h: h["rps"][-1] == pytest.approx(40.0))
    # Oldest first: the quiet start (no requests: no success rate), the trickle, the burst.
    assert h["rps"][0] == 0.0 and h["success_rate"][0] is None
    assert pytest.approx(1.0) in h["rps"] and 1.0 in h["success_rate"]
    assert h["rps"][-1] == pytest.approx(40.0) and h["success_rate"][-1] == pytest.approx(0.75)


async def test_topology_has_web_calling_emoji_and_voting(cluster, dashboard) -> None:
    emojivoto_traffic(cluster)
    t = (await dashboard.http.get("/api/topology", params={"namespace": NS})).json()
    assert {n["name"] for n in t["nodes"]} == {"web", "emoji", "voting", "vote-bot", "web-api"}
    edges = {(e["src"], e["dst"]): e for e in t["edges"]}
    assert set(edges) == {("vote-bot", "web"), ("web", "emoji"), ("web", "voting")}
    assert edges[("web", "emoji")]["rps"] == pytest.approx(120 / 60)
    assert edges[("web", "voting")]["success_rate"] == pytest.approx(0.9)
    assert all(e["tls"] for e in edges.values())


async def test_an_edge_reported_by_pod_and_by_deployment_is_one_edge(cluster, dashboard) -> None:
    cluster.traffic.calls("vote-bot", "web", ok=30, server_knows_pod_only=True)
    cluster.clock.now += 10
    t = (await dashboard.http.get("/api/topology", params={"namespace": NS})).json()
    assert [(e["src"], e["dst"]) for e in t["edges"]] == [("vote-bot", "web")]
    assert t["edges"][0]["requests"] == 30  # the same requests, not counted twice
    assert "vote-bot-5d8f7-p0xyz" not in {n["name"] for n in t["nodes"]}


async def test_plain_traffic_is_marked_not_mtls(cluster, dashboard) -> None:
    cluster.traffic.calls("web", "emoji", ok=5, tls=False)
    cluster.clock.now += 10
    t = (await dashboard.http.get("/api/topology")).json()
    assert [e["tls"] for e in t["edges"]] == [False]


async def test_overview_and_nodes(cluster, dashboard) -> None:
    emojivoto_traffic(cluster)
    o = (await dashboard.http.get("/api/overview")).json()
    namespaces = by_name(o["namespaces"])
    assert namespaces[NS]["labelled"] is True and namespaces["plain"]["labelled"] is False
    assert namespaces[NS]["total_pods"] == 6
    assert namespaces[NS]["requests"] == 240
    assert namespaces[NS]["success_rate"] == pytest.approx(234 / 240)
    nodes = by_name((await dashboard.http.get("/api/nodes")).json()["nodes"])
    assert set(nodes) == {"node1", "node2"}
    assert nodes["node1"]["internal_ip"] == "172.18.0.1"
    assert nodes["node2"]["agent_version"] == "0.1.0"
    assert nodes["node2"]["rss_bytes"] == 30_000_000
    assert nodes["node1"]["last_report_unix_ms"] == 1_000_000_000
    assert by_name(o["nodes"]) == nodes
    v = (await dashboard.http.get("/api/version")).json()
    assert v["source"] == "local" and v["synced"] is False or v["synced"] is True


@pytest.mark.parametrize(
    "path,marker",
    [
        ("/", 'data-page="overview"'),
        ("/deployments", 'data-page="deployments"'),
        (f"/deployments?namespace={NS}", f'data-namespace="{NS}"'),
        (f"/namespaces/{NS}/deployments/web", 'id="chart-latency"'),
        ("/topology", 'id="topology"'),
        ("/tap?resource=deploy/web&namespace=emojivoto", 'value="deploy/web"'),
        ("/nodes", 'id="nodes"'),
    ],
)
async def test_pages_render_their_shell(dashboard, path: str, marker: str) -> None:
    rsp = await dashboard.http.get(path)
    assert rsp.status_code == 200
    assert rsp.headers["content-type"].startswith("text/html")
    assert marker in rsp.text
    assert "default-src 'self'" in rsp.headers["content-security-policy"]


async def test_the_deployment_page_counts_policy_denials(cluster, dashboard) -> None:
    cluster.traffic.calls("vote-bot", "emoji", ok=0, failed=7, denied_by=f"{NS}/emoji-grpc")
    d = (await dashboard.http.get(f"/api/namespaces/{NS}/deployments/emoji")).json()
    assert d["stat"]["authz_denied"] == 7
    js = (await dashboard.http.get("/static/pages.js")).text
    assert "Denied by policy" in js and "authz_denied" in js


async def test_the_deployment_page_has_route_rows(cluster, dashboard) -> None:
    add_routes(cluster.index)
    routed(cluster.store, route=f"{NS}/web-api/0", ok=45, failed=5)
    routed(cluster.store, route="default", ok=3, sequence=1001)
    d = (await dashboard.http.get(f"/api/namespaces/{NS}/deployments/web")).json()
    rows = {r["route"]: r for r in d["routes"]}
    assert set(rows) == {f"{NS}/web-api/0", f"{NS}/web-api/1", "default"}
    api = rows[f"{NS}/web-api/0"]
    assert (api["requests"], api["success_rate"], api["kind"]) == (50, 0.9, "HTTPRoute")
    assert api["service"] == "web-svc" and api["latency_p99_ms"] is not None
    assert rows[f"{NS}/web-api/1"]["requests"] == 0 and rows["default"]["requests"] == 3
    assert d["routes_error"] == ""
    # A Deployment no Service selects: no rows, and the page still answers.
    emoji = (await dashboard.http.get(f"/api/namespaces/{NS}/deployments/emoji")).json()
    assert emoji["routes"] == [] and emoji["stat"] is not None
    page = (await dashboard.http.get(f"/namespaces/{NS}/deployments/web")).text
    assert 'id="routes"' in page
