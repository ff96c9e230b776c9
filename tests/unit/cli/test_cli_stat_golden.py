"""stat, edges and version: table, wide and json output against a real public API server."""

from __future__ import annotations

import json

import pytest
from cli_server import assert_golden

CASES = [
    ("stat-deploy", ["stat", "deploy", "-n", "emojivoto"]),
    ("stat-pod", ["stat", "pod", "-n", "emojivoto"]),
    ("stat-ns", ["stat", "ns"]),
    ("stat-svc", ["stat", "svc", "-n", "emojivoto"]),
    ("stat-node", ["stat", "node"]),
    ("stat-deploy-all", ["stat", "deploy", "-A"]),
    ("stat-deploy-to", ["stat", "deploy/web", "-n", "emojivoto", "--to", "deploy/emoji"]),
    ("edges-deploy", ["edges", "deploy", "-n", "emojivoto"]),
]


@pytest.mark.parametrize("output", ["table", "wide", "json"])
@pytest.mark.parametrize(("name", "args"), CASES, ids=[c[0] for c in CASES])
def test_golden_output(api_server, run, name: str, args: list[str], output: str) -> None:
    api_server.load_world()
    res = run(*args, "-o", output)
    assert res.exit_code == 0, res.output
    assert_golden(f"{name}.{output}", res.output)


def test_stat_deploy_shows_traffic_where_there_is_some(api_server, run) -> None:
    api_server.load_world()
    rows = json.loads(run("stat", "deploy", "-n", "emojivoto", "-o", "json").output)["rows"]
    by_name = {r["name"]: r for r in rows}
    assert sorted(by_name) == ["emoji", "vote-bot", "voting", "web"]
    # 10 reports of 10 requests to web, one failure each, over a 60 s window.
    assert by_name["web"]["requests"] == 100
    assert by_name["web"]["success_rate"] == pytest.approx(0.9)
    assert by_name["web"]["rps"] == pytest.approx(100 / 60)
    assert by_name["vote-bot"]["requests"] == 0 and by_name["vote-bot"]["success_rate"] is None
    table = run("stat", "deploy", "-n", "emojivoto").output.splitlines()
    bot = next(line for line in table if "vote-bot" in line).split()
    assert bot[2:] == ["1/1", "-", "-", "-", "-", "-", "-"]


def test_stat_without_traffic_lists_resources_with_dashes(api_server, run) -> None:
    api_server.load_world(traffic=False)
    out = run("stat", "deploy", "-n", "emojivoto").output.splitlines()
    assert out[0].split() == ["NAMESPACE", "NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50",
                              "LATENCY_P95", "LATENCY_P99", "TCP_CONN"]  # fmt: skip
    assert [line.split()[1] for line in out[1:]] == ["emoji", "vote-bot", "voting", "web"]
    assert all(line.split()[3:] == ["-"] * 6 for line in out[1:])


def test_stat_node_shows_each_agents_load(api_server, run) -> None:
    api_server.load_world()
    rows = json.loads(run("stat", "node", "-o", "json").output)["rows"]
    assert [r["name"] for r in rows] == ["node1", "node2"]
    assert all(r["agent"]["pods_enrolled"] == 2 for r in rows)
    assert rows[0]["agent"]["rss_bytes"] == 48 * 2**20


def test_version_shows_client_and_server(api_server, run) -> None:
    api_server.load_world(traffic=False)
    res = run("version")
    assert res.exit_code == 0
    assert_golden("version.table", res.output.replace(api_server.address, "ADDR"))
    assert res.output.startswith("Client version: 0.1.0\nServer version: 0.1.0 (")


def test_stat_shows_what_agents_reported_a_second_ago(api_server, run) -> None:
    """Fresh reports count at once (the running bucket is in the window), and RPS divides by
    the seconds the window really covers: here one complete 10 s bucket plus 1.5 s."""
    import cli_world
    from cli_server import T0

    api_server.load_world(traffic=False)

    async def feed() -> None:
        cli_world.send_traffic(api_server.store, seconds=3)
        api_server.clock.now = T0 + 1.5

    api_server.run(feed())
    body = json.loads(run("stat", "deploy", "-n", "emojivoto", "-t", "10s", "-o", "json").output)
    web = next(r for r in body["rows"] if r["name"] == "web")
    assert web["requests"] == 30
    assert web["rps"] == pytest.approx(30 / 11.5)
    assert web["tcp_open_connections"] == 1
    assert web["read_bytes_per_second"] == pytest.approx(3 * 1200 / 11.5, abs=0.001)


def test_stat_help_says_what_rps_means(run) -> None:
    text = " ".join(run("stat", "--help").output.split())
    assert "RPS" in text and "divided by the seconds" in text
