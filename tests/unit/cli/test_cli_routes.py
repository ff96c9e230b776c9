"""`nodemesh routes`: per-route golden metrics from the route series the clients' agents
report (RequestSeries.route), the routes attached to the Services (the control plane's index,
what the agents' snapshot carries), and clear errors for what does not exist."""

from __future__ import annotations

import json

import cli_world
from cli_server import T0, assert_golden

from controlplane.sources.events import EventType, ObjectChanged
from controlplane.telemetry import parse_report
from nodemesh.api import telemetry_pb2 as tpb

NS = cli_world.NS
ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "HTTPRoute",
    "metadata": {"name": "web-api", "namespace": NS, "uid": "route-1", "resourceVersion": "1"},
    "spec": {
        "parentRefs": [{"group": "", "kind": "Service", "name": "web-svc", "port": 80}],
        "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
             "backendRefs": [{"name": "web-svc", "port": 80}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
             "backendRefs": [{"name": "web-svc", "port": 80}]},
        ],
    },
}  # fmt: skip


def routed(route: str, latencies_us: list[int], *, ok: bool, status: int) -> tpb.RequestSeries:
    """What vote-bot's agent reports for requests its L7 path sent to web-svc by `route`."""
    s = cli_world._series(tpb.OUTBOUND, "vote-bot", "web", latencies_us, ok=ok, status=status)
    s.dst.CopyFrom(tpb.Peer(namespace=NS, service="web-svc"))
    s.route = route
    return s


def feed_routes(api_server) -> None:  # type: ignore[no-untyped-def]
    async def feed() -> None:
        api_server.index.apply(ObjectChanged(EventType.ADDED, "HTTPRoute", ROUTE))
        for second in range(10):
            report = tpb.AgentReport(
                node="node1", agent_version="0.1.0", sequence=100 + second, interval_ms=1000,
                load=tpb.AgentLoad(pods_enrolled=2, enrolled_pods=cli_world.enrolled("node1")),
            )  # fmt: skip
            report.requests.extend(
                [
                    routed(f"{NS}/web-api/0", [3000] * 8, ok=True, status=200),
                    routed(f"{NS}/web-api/0", [12000] * 2, ok=False, status=503),
                    routed("default", [800], ok=True, status=404),
                ]
            )
            api_server.store.ingest(parse_report(report, encoded_size=report.ByteSize()))

    api_server.clock.now = T0 + 5
    api_server.run(feed())
    api_server.clock.now = T0 + 10


def test_routes_of_a_deployment_per_rule(api_server, run) -> None:  # type: ignore[no-untyped-def]
    api_server.load_world()
    before = json.loads(run("stat", "svc", "-n", NS, "-o", "json").output)["rows"]
    feed_routes(api_server)
    out = run("routes", "deploy/web", "-n", NS)
    assert out.exit_code == 0, out.output
    assert_golden("routes_deploy_web.table", out.output)
    body = json.loads(run("routes", "svc/web-svc", "-n", NS, "-o", "json").output)
    assert body["services"] == [f"{NS}/web-svc"]
    rows = {r["route"]: r for r in body["routes"]}
    api = rows[f"{NS}/web-api/0"]
    assert api["requests"] == 100 and api["success_rate"] == 0.8 and api["kind"] == "HTTPRoute"
    assert round(api["rps"] * api["covered_seconds"]) == 100
    assert 2.9 < api["latency_ms"]["p50"] < 3.1 and 11.5 < api["latency_ms"]["p99"] < 12.5
    assert rows["default"]["requests"] == 10 and rows["default"]["kind"] == ""
    # The second rule carried nothing: shown, with no numbers.
    assert rows[f"{NS}/web-api/1"]["requests"] == 0
    assert rows[f"{NS}/web-api/1"]["success_rate"] is None
    assert body["attached"] == [
        {"kind": "HTTPRoute", "route": f"{NS}/web-api", "service": f"{NS}/web-svc",
         "port": 80, "rules": 2}
    ]  # fmt: skip
    # Only from vote-bot: the same; from web (which sent none on routes): nothing counted.
    mine = json.loads(run("routes", "svc/web-svc", "-n", NS, "--from", "deploy/vote-bot",
                          "-o", "json").output)  # fmt: skip
    assert {r["route"]: r["requests"] for r in mine["routes"]}[f"{NS}/web-api/0"] == 100
    other = json.loads(run("routes", "svc/web-svc", "-n", NS, "--from", "deploy/web",
                           "-o", "json").output)  # fmt: skip
    assert all(r["requests"] == 0 for r in other["routes"])
    # The relay observed the same requests: stat does not count the route series again.
    after = json.loads(run("stat", "svc", "-n", NS, "-o", "json").output)["rows"]
    assert [r["requests"] for r in after] == [r["requests"] for r in before]


def test_routes_errors_name_what_is_wrong(api_server, run) -> None:  # type: ignore[no-untyped-def]
    api_server.load_world()
    missing = run("routes", "deploy/nope", "-n", NS)
    assert missing.exit_code != 0
    assert f"deployment {NS}/nope not found" in missing.output
    no_svc = run("routes", "svc/nope", "-n", NS)
    assert no_svc.exit_code != 0 and f"service {NS}/nope not found" in no_svc.output
    wrong_kind = run("routes", "ns/emojivoto")
    assert wrong_kind.exit_code != 0 and "deploy, svc or pod" in wrong_kind.output
    no_name = run("routes", "deploy", "-n", NS)
    assert no_name.exit_code != 0 and "deploy/NAME" in no_name.output
    # A deployment no Service selects: said so, not an empty table.
    lonely = run("routes", "deploy/vote-bot", "-n", NS)
    assert lonely.exit_code == 0 and "No Service has deploy/vote-bot's pods" in lonely.output
