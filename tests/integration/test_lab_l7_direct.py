"""The agent's L7 path in a two-node lab (root): what a client opening a connection per request
costs, what a client that stops reading costs, and what `nodemesh tap` shows of it.

nginx (two pods on node2) behind `plain` (no route: the L4 relay), `routed` (an HTTPRoute: the
L7 path for HTTP/1.1) and `h2` (two endpoints, HTTP/2 prior knowledge: the L7 path's per-request
balancing); the clients run in a meshed pod on node1, so every upstream crosses the underlay in
an mTLS tunnel (port 4143), where tcpdump counts the tunnels opened.

- A new client connection per request must not cost a new tunnel per request: the L7 path keeps
  its upstream connections (it forwarded the client's `Connection: close`, so each was used
  once, and was dialled through the agent's own outbound listener a second time).
- A client that does not read a large answer must not make the agent hold that answer: the L7
  path reads from the upstream only as fast as the client takes (HTTP/2 acknowledged every byte
  at once, so the whole answer was buffered in the agent).

NODEMESH_L7D_REQUESTS bounds the request runs (smaller under CI=true).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodemesh.lab.paths import LabPaths
from tests.integration.labkit import NODEMESH, agent_pid, deployment, lab_up, nm

pytestmark = [
    pytest.mark.root,
    pytest.mark.lab,
    pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build a lab"),
]

NS = "l7d"
REQUESTS = int(os.environ.get("NODEMESH_L7D_REQUESTS", "200" if os.environ.get("CI") else "400"))
BIG_MIB = 64  # the answer a client does not read: far more than any buffer on the way
# The agent may hold a few windows and socket buffers of it, never a sizeable part of it.
RSS_GROWTH_LIMIT_MIB = 24


def nginx_conf(work: Path) -> str:
    return (
        "daemon off; worker_processes 1; pid /tmp/nginx.pid; error_log /tmp/error.log;\n"
        "events { worker_connections 1024; }\n"
        "http { access_log off; client_body_temp_path /tmp/body; proxy_temp_path /tmp/proxy; "
        "fastcgi_temp_path /tmp/fastcgi; uwsgi_temp_path /tmp/uwsgi; scgi_temp_path /tmp/scgi; "
        "keepalive_requests 100000; send_timeout 300s;\n"
        '  server { listen 8080; location / { return 200 "ok\\n"; }\n'
        f"    location = /big {{ alias {work}/big; }} }}\n"
        '  server { listen 8081 http2; location / { return 200 "ok\\n"; }\n'
        f"    location = /big {{ alias {work}/big; }} }}\n"
        "}\n"
    )


def manifest(work: Path) -> str:
    mount = f"""        volumeMounts: [{{name: work, mountPath: {work}, readOnly: true}}]
      volumes: [{{name: work, hostPath: {{path: {work}, type: Directory}}}}]
"""
    nginx = f"""      containers:
      - name: nginx
        command: [nginx, -c, {work}/nginx.conf]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
{mount}"""
    client = f"""      containers:
      - name: main
        command: [sleep, '36000']
{mount}"""
    services = "".join(
        f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{app: server}}
  ports: [{{port: {port}, targetPort: {port}}}]
"""
        for name, port in (("plain", 8080), ("routed", 8080), ("h2", 8081))
    )
    route = f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: routed, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: routed, port: 8080}}]
  rules:
  - backendRefs: [{{name: routed, port: 8080}}]
    timeouts: {{request: 60s}}
    retry: {{codes: [503], attempts: 2}}
"""
    return (
        f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}, labels: "
        "{nodemesh.io/mesh: enabled}}\n"
        + deployment(NS, "client", client, node="node1")
        + deployment(NS, "server", nginx, node="node2", replicas=2)
        + services
        + route
    )


# The client that asks for /big and then reads nothing (run in the client pod).
STALLED_CLIENT = r"""
import socket, sys, time
import h2.config, h2.connection
kind, host, port, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((host, port))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
if kind == "h2":
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    c.send_headers(1, [(":method", "GET"), (":path", "/big"), (":scheme", "http"),
                       (":authority", host)], end_stream=True)
    s.sendall(c.data_to_send())
else:
    s.sendall(f"GET /big HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
print("sent", flush=True)
time.sleep(hold)  # never reads: the answer piles up wherever nobody holds it back
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[LabPaths, Path]]:
    work = Path(tempfile.mkdtemp(prefix="nodemesh-l7d-"))
    try:
        work.chmod(0o755)
        with (work / "big").open("wb") as f:
            for _ in range(BIG_MIB):
                f.write(os.urandom(1 << 20))
        (work / "nginx.conf").write_text(nginx_conf(work))
        (work / "stalled.py").write_text(STALLED_CLIENT)
        for p in work.iterdir():
            p.chmod(0o644)
        with lab_up("l7d") as paths:
            f = work / f"m-{secrets.token_hex(3)}.yml"
            f.write_text(manifest(work))
            f.chmod(0o644)
            nm("lab", "apply", "--name", paths.name, "-f", str(f), "--wait", "--timeout", "180")
            yield paths, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def exec_in_client(paths: LabPaths, *cmd: str, timeout: float = 300) -> str:
    res = subprocess.run(
        [NODEMESH, "lab", "exec", "--name", paths.name, "-n", NS, "deploy/client", "--", *cmd],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def hey(paths: LabPaths, url: str, *args: str) -> tuple[float, dict[str, int]]:
    """hey's p50 in seconds and its status counts."""
    out = exec_in_client(paths, "hey", *args, url)
    p50 = re.search(r"50%+ in ([\d.]+) secs", out)
    codes = {c: int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    assert p50, out
    return float(p50[1]), codes


class Syns:
    """tcpdump in the underlay netns: the connections opened to the agents' tunnel port."""

    def __init__(self, paths: LabPaths, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", paths.underlay_netns, "tcpdump", "-i", "any", "-nn", "-U",
             "-w", str(out), "tcp dst port 4143 and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        said = ""
        while "listening on" not in said:
            line = self.proc.stderr.readline()
            if not line:
                self.stop()
                raise AssertionError(f"tcpdump did not start: {said}")
            said += line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()

    def connections(self) -> int:
        """Distinct connections (a frame is seen on more than one interface)."""
        text = subprocess.run(
            ["tcpdump", "-nn", "-r", str(self.out)], capture_output=True, text=True, timeout=60
        ).stdout
        return len(set(re.findall(r"IP (\S+) > (\S+): Flags \[S\]", text)))


def test_a_connection_per_request_reuses_the_l7_paths_tunnels(
    lab: tuple[LabPaths, Path], tmp_path: Path
) -> None:
    """hey with a new connection per request through the HTTPRoute: every request answered,
    a handful of tunnels for all of them, and no slower than the relay path (which makes a
    tunnel per connection) by more than a wide margin."""
    paths, _ = lab
    n = REQUESTS
    rate = ["-n", str(n), "-c", "4", "-q", "10", "-disable-keepalive"]
    hey(paths, "http://routed:8080/", "-n", "20", "-c", "4")  # warm: endpoints measured
    syns = Syns(paths, tmp_path / "syn.pcap")
    try:
        l7_p50, codes = hey(paths, "http://routed:8080/", *rate)
    finally:
        syns.stop()
    assert codes == {"200": n}, codes
    tunnels = syns.connections()
    # Before: one tunnel per request (400 for 400). Pooled: at most a few per endpoint.
    assert tunnels <= 16, f"{tunnels} tunnels opened for {n} requests on the L7 path"
    l4_p50, codes = hey(paths, "http://plain:8080/", *rate)
    assert codes == {"200": n}, codes
    assert l7_p50 <= 10 * l4_p50 + 0.005, f"L7 p50 {l7_p50 * 1000:.1f} ms, L4 {l4_p50 * 1000:.1f}"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.parametrize(("kind", "service", "port"), [("h2", "h2", 8081),
                                                      ("http1", "routed", 8080)])  # fmt: skip
def test_a_client_that_stops_reading_holds_the_answer_back(
    lab: tuple[LabPaths, Path], kind: str, service: str, port: int
) -> None:
    """A client asks for 64 MiB and reads none of it: the agents' memory stays flat (the
    answer waits in nginx, not in the agent), and the agent still answers others meanwhile."""
    paths, work = lab
    pids = {node: agent_pid(paths, node) for node in ("node1", "node2")}
    before = {node: rss_mib(pid) for node, pid in pids.items()}
    hold = 12.0
    client = subprocess.Popen(
        [NODEMESH, "lab", "exec", "--name", paths.name, "-n", NS, "deploy/client", "--",
         sys.executable, str(work / "stalled.py"), kind, service, str(port), str(hold)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None
        said = client.stdout.readline().strip()
        assert said == "sent", client.stderr.read() if client.stderr else said
        peak = dict(before)
        deadline = time.monotonic() + hold - 6
        while time.monotonic() < deadline:
            for node, pid in pids.items():
                peak[node] = max(peak[node], rss_mib(pid))
            time.sleep(0.5)
        # The agent still serves others while one client stalls.
        out = exec_in_client(paths, "curl", "-sS", "-m", "20", "http://routed:8080/")
        assert out == "ok\n", out
    finally:
        client.send_signal(signal.SIGINT)
        try:
            client.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            client.kill()
            client.communicate()
    growth = {node: round(peak[node] - before[node], 1) for node in pids}
    assert max(growth.values()) < RSS_GROWTH_LIMIT_MIB, (
        f"agent RSS grew by {growth} MiB while a client held a {BIG_MIB} MiB answer unread"
    )


def test_tap_shows_the_requests_the_l7_path_answered(lab: tuple[LabPaths, Path]) -> None:
    """`nodemesh tap deploy/client` while the client calls the routed Service: each request
    shows once on the client's side, with its method, path, status, latency and route (the L7
    path's requests were not tapped at all, and the relay's second pass saw them without a
    route)."""
    paths, _ = lab
    tap = subprocess.Popen(
        [NODEMESH, "tap", "deploy/client", "-n", NS, "--lab", paths.name, "--path", "/tapme",
         "--duration", "40"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(3)  # the subscription reaches the agents
        for i in range(5):
            out = exec_in_client(paths, "curl", "-sS", "-m", "20", f"http://routed:8080/tapme/{i}")
            assert out == "ok\n", out
        deadline = time.monotonic() + 20
        lines: list[str] = []
        assert tap.stdout is not None
        os.set_blocking(tap.stdout.fileno(), False)
        while time.monotonic() < deadline and sum("end " in x[:4] for x in lines) < 5:
            chunk = tap.stdout.readline()
            if chunk:
                lines.append(chunk.strip())
            else:
                time.sleep(0.2)
    finally:
        tap.send_signal(signal.SIGINT)
        try:
            tap.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            tap.kill()
            tap.communicate()
    shown = "\n".join(lines)
    reqs = [x for x in lines if x.startswith("req ") and "proxy=out" in x]
    assert len(reqs) == 5, shown
    for i in range(5):
        (req,) = [x for x in reqs if f":path=/tapme/{i} " in x + " "]
        assert ":method=GET" in req and f"route={NS}/routed/0" in req, req
    rsps = [x for x in lines if x.startswith("rsp ") and "proxy=out" in x]
    assert len(rsps) == 5 and all(":status=200" in x and "latency=" in x for x in rsps), shown
    ends = [x for x in lines if x.startswith("end ") and "proxy=out" in x]
    assert len(ends) == 5 and all("duration=" in x for x in ends), shown
