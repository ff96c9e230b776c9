"""Mesh routes in a one-node lab (root), with real clients: hey, curl and a grpcio channel.

Layout, namespace `rts` (meshed): `client` (sleeps; clients run in it with `lab exec`);
`web-v1` and `web-v2` behind Services of their own and the parent Service `web` (both), an
HTTPRoute splitting web 90/10; `flaky` (every 5th request 503) and `dead` (all 503) with retry
routes; `slow` (/slow answers after 1 s) with timeouts.request 200ms; `emoji`, three gRPC pods,
no route (per-request balancing). Server-side counters are read with curl inside each pod.
Load is bounded by NODEMESH_ROUTES_REQUESTS (2000, the issue's figure; 1000 under CI=true).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodemesh.lab.paths import LabPaths

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build a lab"),
]

NODEMESH = str(Path(sys.executable).parent / "nodemesh")
PY = sys.executable
APPS = str(Path(__file__).resolve().parent / "routes_lab_apps.py")
NS = "rts"
# The 2000 requests by hand; CI (CI=true) sends 1000 unless told otherwise.
REQUESTS = int(
    os.environ.get("NODEMESH_ROUTES_REQUESTS", "1000" if os.environ.get("CI") else "2000")
)
WEB = f"http://web.{NS}.svc.cluster.local"


def nm(*args: str, timeout: float = 300) -> str:
    res = subprocess.run([NODEMESH, *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"nodemesh {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def deploy(
    name: str, command: str, *, replicas: int = 1, labels: str = "", port: int = 8080
) -> str:
    probe = (
        f"        readinessProbe: {{httpGet: {{path: /healthz, port: {port}}}, periodSeconds: 1}}\n"
        if "http" in command
        else f"        readinessProbe: {{tcpSocket: {{port: {port}}}, periodSeconds: 1}}\n"
    )
    return f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}{labels}}}}}
    spec:
      containers:
      - name: main
        command: [{PY}, {APPS}, {command}]
{probe}"""


def service(name: str, selector: str, port: int = 80, target: int = 8080) -> str:
    return f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{{selector}}}
  ports: [{{port: {port}, targetPort: {target}}}]
"""


def route(name: str, parent: str, rules: str, annotations: str = "{}") -> str:
    return f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {NS}, annotations: {annotations}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: {parent}, port: 80}}]
  rules:
{rules}"""


def split(v1: int, v2: int) -> str:
    return route(
        "web-split",
        "web",
        f"  - backendRefs: [{{name: web-v1, port: 80, weight: {v1}}}, "
        f"{{name: web-v2, port: 80, weight: {v2}}}]\n",
    )


RETRY = "  - backendRefs: [{{name: {0}, port: 80}}]\n    retry: {{codes: [503], attempts: 3}}\n"
APPS_YAML = (
    f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}, labels: {{nodemesh.io/mesh: enabled}}}}\n"
    + f"---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: client, namespace: {NS}}}\n"
    "spec:\n  replicas: 1\n  selector: {matchLabels: {app: client}}\n  template:\n"
    "    metadata: {labels: {app: client}}\n    spec:\n"
    "      containers: [{name: main, command: [sleep, '3600']}]\n"
    + deploy("web-v1", "http, '8080', '0'", labels=", tier: web")
    + deploy("web-v2", "http, '8080', '0'", labels=", tier: web")
    + deploy("flaky", "http, '8080', '5'")
    + deploy("dead", "http, '8080', '1'")
    + deploy("slow", "http, '8080', '0'")
    + deploy("emoji", "grpc, '8080'", replicas=3)
    + service("web", "tier: web")
    + service("web-v1", "app: web-v1")
    + service("web-v2", "app: web-v2")
    + service("flaky", "app: flaky")
    + service("dead", "app: dead")
    + service("slow", "app: slow")
    + service("emoji", "app: emoji", port=8080)
    # The same pods behind a Service with a GRPCRoute retry (UNAVAILABLE), emoji keeps none.
    + service("emoji-retry", "app: emoji", port=8080)
)


GRPC_RETRY = f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: emoji-retry, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: emoji-retry, port: 8080}}]
  rules:
  - backendRefs: [{{name: emoji-retry, port: 8080}}]
    retry: {{attempts: 3}}
"""


class Lab:
    def __init__(self, name: str, tmp: Path) -> None:
        self.name, self.tmp = name, tmp

    def apply(self, text: str, *, wait: bool = False) -> None:
        f = self.tmp / f"m-{secrets.token_hex(3)}.yml"
        f.write_text(text)
        extra = ("--wait", "--timeout", "180") if wait else ()
        nm("lab", "apply", "--name", self.name, "-f", str(f), *extra)

    def exec(self, target: str, *argv: str, timeout: float = 300) -> str:
        res = subprocess.run(
            [NODEMESH, "lab", "exec", "--name", self.name, "-n", NS, target, "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert res.returncode == 0, f"{argv}: {res.stdout}\n{res.stderr}"
        return res.stdout

    def stats(self, deployment: str) -> list[dict[str, int]]:
        st = json.loads(nm("lab", "status", "--name", self.name, "-o", "json"))
        pods = [p["name"] for p in st["pods"] if p["namespace"] == NS
                and p["name"].startswith(deployment + "-")]  # fmt: skip
        return [json.loads(self.exec(p, "curl", "-s", "http://127.0.0.1:8080/stats")) for p in pods]

    def seen(self, deployment: str) -> int:
        return sum(s["seen"] for s in self.stats(deployment))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    name = "rts" + uuid.uuid4().hex[:8]
    try:
        nm("lab", "up", "--name", name, "--nodes", "1", "--api-port", "0", "--dashboard-port", "0")
        lab = Lab(name, tmp_path_factory.mktemp("rtslab"))
        lab.apply(APPS_YAML, wait=True)
        lab.apply(
            split(90, 10)
            + route("flaky", "flaky", RETRY.format("flaky"))
            + route(
                "dead",
                "dead",
                RETRY.format("dead"),
                annotations="{nodemesh.io/retry-budget-min-per-second: '0'}",
            )
            + GRPC_RETRY
            + route(
                "slow",
                "slow",
                "  - backendRefs: [{name: slow, port: 80}]\n    timeouts: {request: 200ms}\n",
            )
        )
        time.sleep(2)  # the routes reach the agent (local source polls every 0.2 s)
        yield lab
    finally:
        for _ in range(2):
            subprocess.run(
                [NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300
            )


class Statuses(Counter[int]):
    """hey's status counts; `str()` is hey's whole report (errors included) for assertions."""

    report = ""

    def __str__(self) -> str:
        return f"{dict(self)}\n{self.report}"


def hey(lab: Lab, *args: str) -> Statuses:
    out = lab.exec("deploy/client", "hey", *args)
    block = out.split("Status code distribution:")[-1]
    got = Statuses({int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", block)})
    got.report = out
    assert got, out
    return got


def test_a_90_10_split_and_a_weight_change_without_a_failed_request(lab: Lab) -> None:
    got = hey(lab, "-n", str(REQUESTS), "-c", "8", f"{WEB}/")
    assert got == Counter({200: REQUESTS}), str(got)
    v1, v2 = lab.seen("web-v1"), lab.seen("web-v2")
    assert v1 + v2 == REQUESTS
    assert abs(v2 / REQUESTS - 0.10) <= 0.03, (v1, v2)

    # Under load (keep-alive connections), flip to 10/90: no request fails, and from 2 s after
    # the apply returned, v2 answers ~90 %.
    result: dict[str, str] = {}
    load = threading.Thread(
        target=lambda: result.setdefault(
            "out",
            lab.exec(
                "deploy/client", PY, APPS, "httploop", f"web.{NS}.svc.cluster.local", "10", "4"
            ),  # fmt: skip
        )
    )
    load.start()
    time.sleep(3)
    lab.apply(split(10, 90))
    applied = time.time()
    load.join(120)
    answers = json.loads(result["out"].strip().splitlines()[-1])
    assert answers and {status for _, status, _ in answers} == {200}, answers[:5]
    after = [body for t, _, body in answers if t >= applied + 2]
    assert len(after) >= 20, (len(answers), applied)
    v2_share = sum(b.startswith("web-v2") for b in after) / len(after)
    assert abs(v2_share - 0.90) <= 0.06, (v2_share, len(after))


def test_retries_hide_a_flaky_endpoint_and_the_budget_caps_a_dead_one(lab: Lab) -> None:
    # The ">= 99 % success" is measured over REQUESTS: over 250 one retried request
    # that still failed plus two client-side errors (a CI run at low load) read as 98.8 %.
    got = hey(lab, "-n", str(REQUESTS), "-c", "4", f"http://flaky.{NS}.svc.cluster.local/")
    assert got.get(200, 0) >= 0.99 * REQUESTS, str(got)
    n = max(200, REQUESTS // 4)
    before = lab.seen("dead")
    got = hey(lab, "-n", str(n), "-c", "4", f"http://dead.{NS}.svc.cluster.local/")
    # Every answer is the app's 503 (a CI run at load 15 once saw 2 of 250 requests end in a
    # client-side error instead: allowed here, and hey's report says which).
    assert set(got) == {503} and got[503] >= n - 2, str(got)
    retries = lab.seen("dead") - before - n
    # The budget (20 %, floor 0 here) caps them; without it each request is tried 4 times.
    assert 0 < retries <= 0.2 * n + 5, retries


def test_a_request_timeout_answers_504_and_cancels_the_backend(lab: Lab) -> None:
    out = lab.exec(
        "deploy/client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
        f"http://slow.{NS}.svc.cluster.local/slow",
    )  # fmt: skip
    code, seconds = out.split()
    assert code == "504", out
    assert float(seconds) < 0.8, out  # about 0.2 s; never the backend's 1 s
    deadline = time.monotonic() + 10
    while lab.stats("slow")[0]["cancelled"] < 1:
        assert time.monotonic() < deadline, lab.stats("slow")
        time.sleep(0.5)


def test_one_grpc_channel_spreads_over_three_pods(lab: Lab) -> None:
    """One channel (one HTTP/2 connection) is balanced per call: every pod gets a fair share,
    where a pinned connection would give one pod all. Not an even third each: the choice is
    latency-aware (power of two choices over a peak EWMA), so a pod that answers faster (on the
    client's node, no tunnel) takes more, the more so on a loaded machine (127/148/221 of 496
    once with two lab modules running beside it)."""
    calls = max(240, REQUESTS // 4)
    out = lab.exec(
        "deploy/client", PY, APPS, "grpcclient", f"emoji.{NS}.svc.cluster.local:8080", str(calls)
    )
    answers = json.loads(out.strip().splitlines()[-1])
    assert len(answers) == 3, answers
    total = sum(answers.values())
    for count in answers.values():
        assert 0.15 <= count / total <= 0.55, answers


def test_the_l7_path_is_never_plaintext_on_the_wire(lab: Lab) -> None:
    """Requests the client's agent terminated leave the node only inside the mTLS tunnel."""
    from test_lab_traffic import Capture

    marker = "rts-" + secrets.token_hex(8)
    cap = Capture(LabPaths(lab.name).node_netns("node1"))
    try:
        for svc in ("web", "flaky"):
            lab.exec("deploy/client", "curl", "-s", "-H", f"x-marker: {marker}",
                     f"http://{svc}.{NS}.svc.cluster.local/")  # fmt: skip
        out = lab.exec(
            "deploy/client", PY, APPS, "grpcclient", f"emoji.{NS}.svc.cluster.local:8080", "16"
        )
        assert sum(json.loads(out.strip().splitlines()[-1]).values()) == 16
        time.sleep(1)
    finally:
        cap.close()
    wire = b"".join(cap.frames)
    assert len(wire) > 10_000  # the capture saw the traffic (in TLS)
    assert marker.encode() not in wire  # a header the L7 path re-sent upstream


def test_routes_shows_each_rule_with_what_it_carried(lab: Lab) -> None:
    """`nodemesh routes`: every request the client's L7 path answered is reported with its
    route (namespace/name/rule, "default" when no rule took it) and shown per Service."""
    n = 200
    got = hey(lab, "-n", str(n), "-c", "4", f"http://flaky.{NS}.svc.cluster.local/")
    assert got.get(200, 0) >= n - 2, str(got)
    out = lab.exec(
        "deploy/client", PY, APPS, "grpcclient", f"emoji.{NS}.svc.cluster.local:8080", "32"
    )
    assert sum(json.loads(out.strip().splitlines()[-1]).values()) == 32  # batches of 8

    def routes(*args: str) -> dict:
        return json.loads(nm("routes", *args, "-n", NS, "-t", "15m", "--lab", lab.name,
                             "-o", "json"))  # fmt: skip

    deadline = time.monotonic() + 30  # agents report every second
    while True:
        flaky = {r["route"]: r for r in routes("svc/flaky")["routes"]}
        emoji = {r["route"]: r for r in routes("deploy/emoji")["routes"]}
        rule = flaky.get(f"{NS}/flaky/0", {})
        if rule.get("requests", 0) >= n and emoji.get("default", {}).get("requests", 0) >= 32:
            break
        assert time.monotonic() < deadline, (flaky, emoji)
        time.sleep(1)
    # Retries hide the flaky endpoint's 503s from the route's success rate, as from the client.
    assert rule["kind"] == "HTTPRoute" and rule["success_rate"] >= 0.99, rule
    assert rule["latency_ms"]["p99"] is not None and rule["service"] == f"{NS}/flaky"
    # gRPC with no route: per-request balancing, counted as the Service's default route.
    assert emoji["default"]["success_rate"] == 1.0 and emoji["default"]["kind"] == ""
    # A Deployment behind two Services: both, with the split route attached to `web`.
    web_v1 = routes("deploy/web-v1")
    assert web_v1["services"] == [f"{NS}/web", f"{NS}/web-v1"]
    assert {(a["route"], a["service"]) for a in web_v1["attached"]} == {
        (f"{NS}/web-split", f"{NS}/web")
    }
    # The same label on the agent's /metrics, as Prometheus scrapes it.
    metrics = subprocess.run(
        ["ip", "netns", "exec", LabPaths(lab.name).node_netns("node1"), PY, "-c",
         "import urllib.request as u;"
         "print(u.urlopen('http://127.0.0.1:4191/metrics').read().decode())"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    flaky_total = sum(
        float(value)
        for labels, value in re.findall(r"^route_request_total\{([^}]*)\} (\S+)$", metrics, re.M)
        if f'route="{NS}/flaky/0"' in labels and 'dst_service="flaky"' in labels
    )
    assert flaky_total >= n, metrics[-3000:]
    assert re.search(r'^route_request_total\{[^}]*route="default"', metrics, re.M)
    table = nm("routes", "deploy/emoji", "-n", NS, "--lab", lab.name)
    assert "[DEFAULT]" in table and f"{NS}/emoji" in table, table
    res = subprocess.run([NODEMESH, "routes", "deploy/nope", "-n", NS, "--lab", lab.name],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode != 0 and f"deployment {NS}/nope not found" in res.stderr, res


def test_a_grpc_route_retry_hides_unavailable(lab: Lab) -> None:
    """Every 5th call an emoji pod gets fails with UNAVAILABLE (trailers-only): through emoji
    (no route) the client sees those failures; through emoji-retry (a GRPCRoute with `retry`,
    codes defaulting to 503, which stands for UNAVAILABLE) it sees none."""
    calls = 40

    def flaky(service: str) -> Counter[str]:
        out = lab.exec(
            "deploy/client", PY, APPS, "grpcflaky", f"{service}.{NS}.svc.cluster.local:8080",
            str(calls),
        )  # fmt: skip
        return Counter(json.loads(out.strip().splitlines()[-1]))

    plain = flaky("emoji")
    assert plain["UNAVAILABLE"] >= 3 and sum(plain.values()) == calls, plain
    assert flaky("emoji-retry") == Counter({"ok": calls})
