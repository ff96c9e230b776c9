"""A gRPC channel through the mesh loses no call when its one endpoint is replaced, and spreads
when the Service grows (two-node lab, root, a real grpcio client and server).

A meshed client pod on node1 keeps ONE grpcio channel to a Service with one endpoint on node2 and
calls it back to back, each call taking 200 ms, so one is always in flight. With one endpoint
and no route, the agent relays the channel's connection to that pod (no per-request balancing:
nodeagent.proxy.l7.takeover). The server ignores SIGTERM, as many apps do, so it never sends a
GOAWAY of its own and is SIGKILLed at the end of its grace period.

- Rollout (the Deployment's template changes): a new pod gets ready, the old one leaves the
  Service and is killed a few seconds later. Every call must succeed, and once the old pod is
  gone every call is answered by the new one. Before the agent told relayed HTTP/2 clients to go
  away (nodeagent.proxy.h2drain), the channel stayed on the old pod until its SIGKILL and the
  call in flight failed (UNAVAILABLE, "Socket closed").
- Scale-up (1 -> 2 replicas): a new channel, then a second endpoint; later calls must reach both
  pods. Before, the channel's relayed connection stayed on the first pod for good.

Run alone: NODEMESH_LEAKCHECK_ONLY=h2dr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodemesh.lab.paths import LabPaths
from tests.integration.labkit import deployment, lab_up, nm, pods, show_lab_logs

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build a lab"),
]

NS = "h2d"
PY = sys.executable
APPS = str(Path(__file__).resolve().parent / "h2drain_lab_apps.py")
SETTLE_S = 60.0  # bound on each wait below (the lab, the agents and the control plane are slow)


def manifest(*, replicas: int, rev: str) -> str:
    client = "      containers: [{name: main, command: [sleep, '36000']}]\n"
    server = f"""      terminationGracePeriodSeconds: 3
      containers:
      - name: main
        command: [{PY}, {APPS}, server, '8080']
        env: [{{name: REV, value: '{rev}'}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"""
    return (
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}, labels: "
        "{nodemesh.io/mesh: enabled}}\n"
        + deployment(NS, "client", client, node="node1")
        + deployment(NS, "api", server, node="node2", replicas=replicas)
        + f"""---
apiVersion: v1
kind: Service
metadata: {{name: api, namespace: {NS}}}
spec:
  selector: {{app: api}}
  ports: [{{port: 8080, targetPort: 8080}}]
"""
    )


def apply(lab: LabPaths, tmp: Path, *, replicas: int, rev: str, wait: bool = True) -> None:
    path = tmp / f"apps-{replicas}-{rev}.yml"
    path.write_text(manifest(replicas=replicas, rev=rev))
    args = ["lab", "apply", "--name", lab.name, "-f", str(path)]
    nm(*args, *(["--wait", "--timeout", "180"] if wait else []))


def api_pods(lab: LabPaths) -> dict[str, bool]:
    """The api pods the lab runs (not those being stopped): name -> ready."""
    return {p["name"]: p["ready"] for p in pods(lab, NS) if p["name"].startswith("api-")}


def vip(lab: LabPaths) -> str:
    st = json.loads(nm("lab", "status", "--name", lab.name, "-o", "json"))
    return next(
        s["clusterIP"] for s in st["services"] if (s["namespace"], s["name"]) == (NS, "api")
    )


class Channel:
    """The client app in the client pod's netns: one grpcio channel, its calls as they end."""

    def __init__(self, lab: LabPaths, target: str) -> None:
        client = next(p["name"] for p in pods(lab, NS) if p["name"].startswith("client-"))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.pod_netns(NS, client), PY, APPS, "client", target],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.calls: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.calls.append(json.loads(line))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, count: int) -> list[dict[str, Any]]:
        """Until `count` calls have ended (or the client died): the calls so far."""
        deadline = time.monotonic() + SETTLE_S
        with self.changed:
            while len(self.calls) < count and self.proc.poll() is None:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.calls)} calls in {SETTLE_S:g} s: {self.calls[-5:]}"
                self.changed.wait(left)
            assert len(self.calls) >= count, f"client died: {self.proc.stderr.read()}"  # type: ignore[union-attr]
            return list(self.calls)

    def stop(self) -> list[dict[str, Any]]:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the client finishes its call in flight and exits
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return list(self.calls)


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LabPaths]:
    with lab_up("h2dr") as paths:
        apply(paths, tmp_path, replicas=1, rev="1")
        yield paths
        show_lab_logs(request, paths)


def goaways(lab: LabPaths) -> dict[str, float]:
    """node1's agent's count of relayed HTTP/2 connections it told to go away, by reason."""
    metrics = subprocess.run(
        ["ip", "netns", "exec", lab.node_netns("node1"), "curl", "-sS", "--max-time", "20",
         "http://127.0.0.1:4191/metrics"], capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    found = re.findall(r'^nodemesh_agent_h2_goaways_total\{reason="(\w+)"\} (\S+)$', metrics, re.M)
    return {reason: float(n) for reason, n in found}


def _who(calls: list[dict[str, Any]]) -> Counter[str]:
    return Counter(c["who"] if c["ok"] else f"FAILED {c['code']}: {c['details']}" for c in calls)


def _wait_until(what: str, done: Any) -> None:
    deadline = time.monotonic() + SETTLE_S
    while not done():
        assert time.monotonic() < deadline, f"not within {SETTLE_S:g} s: {what}"
        time.sleep(0.2)  # the lab's state, polled: no event reaches the test from it


def test_rollout_of_the_only_endpoint_fails_no_call(lab: LabPaths, tmp_path: Path) -> None:
    (old,) = api_pods(lab)
    channel = Channel(lab, f"{vip(lab)}:8080")
    try:
        before = channel.wait_for(10)
        assert _who(before) == Counter({old: 10}), _who(before)
        apply(lab, tmp_path, replicas=1, rev="2", wait=False)  # the template changes: a rollout
        _wait_until("the new pod replaces the old one", lambda: old not in api_pods(lab)
                    and any(api_pods(lab).values()))  # fmt: skip
        (new,) = api_pods(lab)
        # The old pod ignores SIGTERM: it is SIGKILLed after its grace; then its netns goes.
        old_netns = Path("/run/netns") / lab.pod_netns(NS, old)
        _wait_until("the old pod is killed", lambda: not old_netns.exists())
        killed_at = len(channel.calls)
        calls = channel.wait_for(killed_at + 10)
    finally:
        calls = channel.stop()
    failed = [c for c in calls if not c["ok"]]
    assert not failed, f"{len(failed)} of {len(calls)} calls failed: {_who(calls)}"
    after = calls[killed_at:]
    assert _who(after) == Counter({new: len(after)}), _who(after)
    # The one connection was told once: when the new pod joined it (the rollout's surge), or
    # when the old pod left, whichever update came first.
    assert sum(goaways(lab).values()) == 1, goaways(lab)


def test_scale_up_spreads_a_channel_over_both_pods(lab: LabPaths, tmp_path: Path) -> None:
    (first,) = api_pods(lab)
    channel = Channel(lab, f"{vip(lab)}:8080")
    try:
        before = channel.wait_for(5)
        assert _who(before) == Counter({first: 5}), _who(before)
        apply(lab, tmp_path, replicas=2, rev="1")  # --wait: both ready
        (second,) = set(api_pods(lab)) - {first}
        grown_at = len(channel.calls)
        # The agent learns of the second endpoint within the lab's propagation time; 40 more
        # calls (8 s) leave it time and give per-request balancing plenty of chances.
        calls = channel.wait_for(grown_at + 40)
    finally:
        calls = channel.stop()
    failed = [c for c in calls if not c["ok"]]
    assert not failed, f"{len(failed)} of {len(calls)} calls failed: {_who(calls)}"
    late = _who(calls[-20:])
    assert late[first] > 0 and late[second] > 0, f"the last 20 calls: {late}"
    assert goaways(lab) == {"balancing": 1.0}, goaways(lab)
