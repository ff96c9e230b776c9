"""Policy denials reported by the destination's agent reach `stat`: an AUTHZ_DENIED column
(shown when any row has denials) and `authz_denied` in -o json, per deployment."""

from __future__ import annotations

import json

import cli_world
from cli_server import T0

from controlplane.telemetry import parse_report
from nodemesh.api import telemetry_pb2 as tpb


def deny_report(sequence: int) -> tpb.AgentReport:
    report = tpb.AgentReport(
        node="node2", agent_version="0.1.0", sequence=sequence, interval_ms=1000,
        load=tpb.AgentLoad(pods_enrolled=2, enrolled_pods=cli_world.enrolled("node2")),
    )  # fmt: skip
    # vote-bot's gRPC calls to emoji answered PERMISSION_DENIED by emoji's agent, 3 per second,
    denied = cli_world._series(tpb.INBOUND, "vote-bot", "emoji", [300] * 3, ok=False)
    denied.protocol, denied.grpc_status, denied.authz_deny = tpb.GRPC, 7, "emojivoto/emoji-grpc"
    report.requests.append(denied)
    # and one TCP connection to voting refused by its policy.
    report.tcp.append(
        tpb.TcpSeries(
            direction=tpb.INBOUND,
            src=cli_world.peer("vote-bot"),
            dst=cli_world.peer("voting", service=True),
            authz_denied=1,
        )
    )
    return report


def test_stat_counts_denials_per_destination(api_server, run) -> None:
    api_server.load_world()

    async def feed() -> None:
        for second in range(4):
            report = deny_report(100 + second)
            api_server.store.ingest(parse_report(report, encoded_size=report.ByteSize()))

    api_server.clock.now = T0 + 5
    api_server.run(feed())
    api_server.clock.now = T0 + 10
    rows = json.loads(run("stat", "deploy", "-n", "emojivoto", "-o", "json").output)["rows"]
    by_name = {r["name"]: r["authz_denied"] for r in rows}
    assert by_name == {"emoji": 12, "vote-bot": 0, "voting": 4, "web": 0}
    table = run("stat", "deploy", "-n", "emojivoto").output.splitlines()
    assert table[0].split()[-1] == "AUTHZ_DENIED"
    emoji = next(line for line in table if line.split()[1] == "emoji").split()
    assert emoji[-1] == "12"
