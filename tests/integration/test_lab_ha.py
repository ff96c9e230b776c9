"""`lab up --ha`: three control-plane replicas. For a fixed vote-bot run, stat through each
replica (its own pod IP, from a node) gives the same numbers, equal to vote-bot's ground truth;
a replica killed during a second run leaves the others' numbers whole (both runs, equal to the
truth) and a tap through a survivor keeps getting events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.lab.paths import LabPaths

pytestmark = [pytest.mark.root, pytest.mark.lab]

REPO = Path(__file__).resolve().parents[2]
NODEMESH = str(Path(sys.executable).parent / "nodemesh")
PREFIX = "cpha"  # NODEMESH_LEAKCHECK_ONLY=cpha checks only this test's lab
RATE = 20
FIRST, SECOND = 100, 300

# Run inside a node's network namespace: the replicas' pod IPs are routed there.
PROBE = r"""
import json, sys, grpc
from nodemesh.api import public_pb2 as pb, public_pb2_grpc as pb_grpc
op, ip, token = sys.argv[1:4]
meta = [("authorization", "Bearer " + token)]
with grpc.insecure_channel(ip + ":8085") as ch:
    stub = pb_grpc.PublicStub(ch)
    if op == "stat":
        rows = {}
        for name, src in (("web", "vote-bot"), ("emoji", "web"), ("voting", "web")):
            r = stub.Stat(pb.StatRequest(
                resource=pb.Resource(kind="deploy", namespace="emojivoto", name=name),
                from_resource=pb.Resource(kind="deploy", namespace="emojivoto", name=src),
                window_seconds=600), metadata=meta, timeout=20).rows[0]
            rows[name] = [r.requests, round(r.success_rate, 6)]
        print(json.dumps(rows))
    elif op == "statall":  # what `stat deploy -A` asks: built ahead after a start
        r = stub.Stat(pb.StatRequest(resource=pb.Resource(kind="deploy"), all_namespaces=True),
                      metadata=meta, timeout=20)
        print(json.dumps({x.resource.name: x.requests for x in r.rows
                          if x.resource.namespace == "emojivoto"}))
    else:
        req = pb.TapRequest(resource=pb.Resource(kind="deploy", namespace="emojivoto", name="web"),
                            max_rps=100)
        for ev in stub.Tap(req, metadata=meta):
            print(json.dumps([ev.node, ev.WhichOneof("kind")]), flush=True)
"""


def nm(*args: str, timeout: float = 300) -> str:
    res = subprocess.run([NODEMESH, *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"nodemesh {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def emojivoto(bot_replicas: int, requests: int) -> str:
    docs = list(yaml.safe_load_all((REPO / "manifests/examples/emojivoto.yml").read_text()))
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "vote-bot":
            d["spec"]["replicas"] = bot_replicas
            env = d["spec"]["template"]["spec"]["containers"][0].setdefault("env", [])
            env[:] = [e for e in env if e["name"] not in ("VOTE_RATE", "VOTE_MAX_REQUESTS")]
            env += [{"name": "VOTE_RATE", "value": str(RATE)},
                    {"name": "VOTE_MAX_REQUESTS", "value": str(requests)}]  # fmt: skip
    return yaml.safe_dump_all(docs)


@pytest.fixture
def lab() -> Iterator[LabPaths]:
    name = PREFIX + uuid.uuid4().hex[:6]
    try:
        nm("lab", "up", "--name", name, "--nodes", "2", "--ha", "--api-port", "0",
           "--dashboard-port", "0")  # fmt: skip
        yield LabPaths(name)
    finally:
        subprocess.run([NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300)


def replicas(paths: LabPaths) -> dict[str, str]:
    st = json.loads(nm("lab", "status", "--name", paths.name, "-o", "json"))
    return {
        p["name"]: p["ip"]
        for p in st["pods"]
        if p["namespace"] == "nodemesh" and p["name"].startswith("nodemesh-controlplane")
    }


def probe(paths: LabPaths, *args: str) -> list[str]:
    token = (paths.access / "admin.token").read_text().strip()
    return ["ip", "netns", "exec", f"nm-{paths.name}-node1", sys.executable, "-c", PROBE,
            *args[:2], token]  # fmt: skip


def stat(paths: LabPaths, ip: str, op: str = "stat") -> dict[str, Any]:
    res = subprocess.run(probe(paths, op, ip), capture_output=True, text=True, timeout=60,
                         cwd=REPO)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def run_bot(paths: LabPaths, tmp: Path, requests: int) -> None:
    manifest = tmp / f"emojivoto-{requests}.yml"
    manifest.write_text(emojivoto(1, requests))
    nm("lab", "apply", "--name", paths.name, "-f", str(manifest), "--wait", "--timeout", "120")


def bot(paths: LabPaths) -> dict[str, Any]:
    out = nm("lab", "exec", "--name", paths.name, "-n", "emojivoto", "deploy/vote-bot", "--",
             "python3", "-c", "import urllib.request as u; "
             "print(u.urlopen('http://127.0.0.1:8081/stats').read().decode())")  # fmt: skip
    return json.loads(out)  # type: ignore[no-any-return]


def wait_done(paths: LabPaths, requests: int) -> dict[str, Any]:
    deadline = time.monotonic() + requests / RATE + 90
    while not (truth := bot(paths))["done"]:
        assert time.monotonic() < deadline, truth
        time.sleep(1)
    assert truth["sent"] == requests and truth["in_flight"] == 0, truth
    return truth


def expected(truths: list[dict[str, Any]]) -> dict[str, int]:
    web = sum(t["sent"] for t in truths)
    lists = sum(sum(t["by_path"].get("/api/list", {}).values()) for t in truths)
    votes = sum(sum(t["by_path"].get("/api/vote", {}).values()) for t in truths)
    return {"web": web, "emoji": lists + votes, "voting": votes}


def controlplane_pid(paths: LabPaths, pod: str) -> int:
    """The host PID of one replica's nodemesh-controlplane (its pod's env names it)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"nodemesh-controlplane" in c for c in cmdline[:2]) and (
            f"POD_NAME={pod}".encode() in env and f"--state-dir={paths.root}".encode() in cmdline
        ):
            return int(entry.name)
    raise AssertionError(f"no control-plane process for pod {pod}")


def test_every_replica_answers_with_the_truth_and_a_killed_one_takes_nothing_away(
    lab: LabPaths, tmp_path: Path
) -> None:
    manifest = tmp_path / "emojivoto-0.yml"
    manifest.write_text(emojivoto(0, FIRST))
    nm("lab", "apply", "--name", lab.name, "-f", str(manifest), "--wait", "--timeout", "120")
    cps = replicas(lab)
    assert len(cps) == 3, cps

    run_bot(lab, tmp_path, FIRST)
    truths = [wait_done(lab, FIRST)]
    assert sum(v.get("error", 0) for v in truths[0]["by_path"].values()) == 0, truths[0]
    time.sleep(12)  # reports each second; a peer's forward a moment later
    want = expected(truths)
    seen = {pod: stat(lab, ip) for pod, ip in cps.items()}
    for pod, rows in seen.items():
        assert {k: v[0] for k, v in rows.items()} == want, (pod, seen)
    assert len({json.dumps(rows, sort_keys=True) for rows in seen.values()}) == 1, seen
    # Stat deploy over every namespace, the default window (60 s: the run ended ~12 s ago):
    # the answer each replica builds ahead after its start (controlplane.public_api
    # .build_ahead) is the whole cluster's too.
    inbound = {pod: stat(lab, ip, "statall") for pod, ip in cps.items()}
    for pod, rows in inbound.items():
        assert {k: rows.get(k) for k in want} == want, (pod, inbound)

    # A second run; a tap through one replica; another replica is killed midway.
    (tapped, tap_ip), (killed, _), (third, third_ip) = sorted(cps.items())
    tap = subprocess.Popen(probe(lab, "tap", tap_ip), stdout=subprocess.PIPE, text=True,
                           cwd=REPO)  # fmt: skip
    events: list[tuple[float, str, str]] = []

    def read() -> None:
        assert tap.stdout is not None
        for line in tap.stdout:
            node, kind = json.loads(line)
            events.append((time.monotonic(), node, kind))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        run_bot(lab, tmp_path, SECOND)
        time.sleep(3)
        os.kill(controlplane_pid(lab, killed), signal.SIGKILL)
        killed_at = time.monotonic()
        truths.append(wait_done(lab, SECOND))
    finally:
        tap.kill()
        tap.wait(10)
        reader.join(10)
        if tap.stdout:
            tap.stdout.close()
    before = [e for e in events if e[0] < killed_at]
    late = [e for e in events if e[0] > killed_at + 5]
    assert before and late, (
        f"tap through {tapped}: {len(before)} events before {killed} was killed, "
        f"{len(late)} from 5 s after"
    )

    time.sleep(12)
    want = expected(truths)
    for pod, ip in ((tapped, tap_ip), (third, third_ip)):
        rows = stat(lab, ip)
        assert {k: v[0] for k, v in rows.items()} == want, (pod, rows, "killed:", killed)
