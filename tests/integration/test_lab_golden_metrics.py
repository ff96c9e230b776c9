"""The mesh's numbers against vote-bot's ground truth, in the lab: for a fixed run across two
nodes, the requests the control plane reports for web, emoji and voting equal what vote-bot sent
(less what never reached web), web's success rate matches the doughnut failures, and latency
percentiles are non-zero and ordered."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from nodemesh import ports
from nodemesh.api import public_pb2 as pb
from nodemesh.api import public_pb2_grpc as pb_grpc
from nodemesh.lab.paths import LabPaths
from tests.integration.labkit import lab_up, nm

pytestmark = [pytest.mark.root, pytest.mark.lab]

REPO = Path(__file__).resolve().parents[2]
REQUESTS = 150
RATE = 25


def emojivoto(bot_replicas: int) -> str:
    docs = list(yaml.safe_load_all((REPO / "manifests/examples/emojivoto.yml").read_text()))
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "vote-bot":
            d["spec"]["replicas"] = bot_replicas
            env = d["spec"]["template"]["spec"]["containers"][0].setdefault("env", [])
            env[:] = [e for e in env if e["name"] not in ("VOTE_RATE", "VOTE_MAX_REQUESTS")]
            env += [{"name": "VOTE_RATE", "value": str(RATE)},
                    {"name": "VOTE_MAX_REQUESTS", "value": str(REQUESTS)}]  # fmt: skip
    return yaml.safe_dump_all(docs)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[LabPaths, int]]:
    with lab_up("g") as paths:
        st = json.loads(nm("lab", "status", "--name", paths.name, "-o", "json"))
        yield paths, next(f["local_port"] for f in st["forwards"] if f["port"] == ports.PUBLIC_API)


def stat(port: int, name: str, *, source: str, admin: Any) -> Any:
    """Requests into deploy/`name` from deploy/`source` (readiness probes are traffic too, and
    are not part of vote-bot's ground truth)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = pb_grpc.PublicStub(ch).Stat(
            pb.StatRequest(
                resource=pb.Resource(kind="deploy", namespace="emojivoto", name=name),
                from_resource=pb.Resource(kind="deploy", namespace="emojivoto", name=source),
                window_seconds=120,
            ),
            timeout=10,
            metadata=admin,
        )
    return resp.rows[0]


def test_control_plane_counts_equal_vote_bots_ground_truth(
    lab: tuple[LabPaths, int], tmp_path: Path
) -> None:
    paths, port = lab
    manifest = tmp_path / "emojivoto.yml"
    manifest.write_text(emojivoto(bot_replicas=0))
    nm("lab", "apply", "--name", paths.name, "-f", str(manifest), "--wait", "--timeout", "120")
    # web is ready before the bot starts, so every request the bot sends reaches the mesh.
    manifest.write_text(emojivoto(bot_replicas=1))
    nm("lab", "apply", "--name", paths.name, "-f", str(manifest), "--wait", "--timeout", "120")

    def bot() -> dict[str, Any]:
        out = nm("lab", "exec", "--name", paths.name, "-n", "emojivoto", "deploy/vote-bot", "--",
                 "python3", "-c", "import urllib.request as u; "
                 "print(u.urlopen('http://127.0.0.1:8081/stats').read().decode())")  # fmt: skip
        return json.loads(out)  # type: ignore[no-any-return]

    deadline = time.monotonic() + REQUESTS / RATE + 60
    while not (truth := bot())["done"]:
        assert time.monotonic() < deadline, truth
        time.sleep(1)
    assert truth["sent"] == REQUESTS and truth["in_flight"] == 0
    by_path = truth["by_path"]
    errors = sum(v.get("error", 0) for v in by_path.values())
    assert errors == 0, truth  # the mesh must not lose connections that could have been kept
    lists = sum(by_path.get("/api/list", {}).values())
    votes = sum(by_path.get("/api/vote", {}).values())
    failed_votes = by_path.get("/api/vote", {}).get("5xx", 0)

    # Reports arrive every second and the store counts complete 10 s buckets.
    time.sleep(12)
    admin = [("authorization", f"Bearer {(paths.access / 'admin.token').read_text().strip()}")]
    web = stat(port, "web", source="vote-bot", admin=admin)
    emoji = stat(port, "emoji", source="web", admin=admin)
    voting = stat(port, "voting", source="web", admin=admin)
    assert web.requests == REQUESTS, web
    # Every list is one emoji.ListAll; every vote is one FindByShortcode then one Vote.
    assert emoji.requests == lists + votes, emoji
    assert voting.requests == votes, voting
    assert web.success_rate == pytest.approx((REQUESTS - failed_votes) / REQUESTS)
    assert voting.success_rate == pytest.approx((votes - failed_votes) / votes)
    for row in (web, emoji, voting):
        assert 0 < row.latency_p50_ms <= row.latency_p95_ms <= row.latency_p99_ms, row
