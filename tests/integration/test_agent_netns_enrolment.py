"""The node agent for real (root): a node netns, pod netns on a bridge, the real control plane's
destination stream, the real nodemesh-cni executable, real iptables and real traffic.

World: node netns `<p>-node` holds bridge br0 (10.77.0.1/24) and the agent (a subprocess, run
with `ip netns exec` as a DaemonSet would run on the node). Pods a (10.77.0.2) and b (10.77.0.3)
are in the meshed namespace `shop`; pod c (10.77.0.4) is in `plain`, which is not meshed. The
control plane (local source over a temp dir -> index -> destination gRPC on a unix socket) runs
on a thread of the test process. Nothing routes out of these namespaces.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from controlplane.destination import DestinationHub, DestinationService
from controlplane.feed import Feed
from controlplane.index import ClusterIndex
from controlplane.sources.local import LocalSource
from nodeagent.rules import normalise_save
from nodemesh import tasks
from nodemesh.api import destination_pb2_grpc as pb_grpc
from nodemesh.netns import socket_in_netns

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import leakcheck  # noqa: E402

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(
        not (shutil.which("ip") and shutil.which("iptables-legacy-save")),
        reason="needs iproute2 and iptables (legacy tools)",
    ),
]

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
# The checkout under test (not whatever the venv's console script points at) runs as the agent.
AGENT = [sys.executable, "-m", "nodeagent.main"]
PLUGIN = VENV_BIN / "nodemesh-cni"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "rules"
IPS = {"a": "10.77.0.2", "b": "10.77.0.3", "c": "10.77.0.4"}
NAMESPACES = {"a": "shop", "b": "shop", "c": "plain"}
NODE_IP = "10.77.0.1"


def sh(*args: str, check: bool = True) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"{args}: {done.stderr}")
    return done.stdout


# --- a control plane fed from a directory of objects, on its own thread -----------------------


def obj_namespace(name: str, meshed: bool) -> dict[str, Any]:
    labels = {"nodemesh.io/mesh": "enabled"} if meshed else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def obj_pod(ns: str, name: str, ip: str | None, labels: dict[str, str]) -> dict[str, Any]:
    """A pod as the API shows it: Pending without an IP until its sandbox exists."""
    status: dict[str, Any] = {"phase": "Pending", "hostIP": NODE_IP}
    if ip is not None:
        status.update(phase="Running", podIP=ip, conditions=[{"type": "Ready", "status": "True"}])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": labels},
        "spec": {"nodeName": "node1", "serviceAccountName": "default", "containers": [{}]},
        "status": status,
    }


class ObjectDir:
    def __init__(self, root: Path) -> None:
        self.root = root / "objects"
        self.rv = 100

    def put(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        meta.setdefault("uid", f"uid-{meta['name']}")
        folder = self.root / obj["kind"]
        if "namespace" in meta:
            folder = folder / meta["namespace"]
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{meta['name']}.tmp"
        tmp.write_text(yaml.safe_dump(obj))
        tmp.rename(folder / f"{meta['name']}.yaml")


class ControlPlane:
    """The real index and destination service behind a unix-socket gRPC server."""

    def __init__(self, state_dir: Path, address: str) -> None:
        self.state_dir, self.address = state_dir, address
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="controlplane", daemon=True)
        self._stop: asyncio.Event | None = None

    def _main(self) -> None:
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        import grpc

        self._stop = asyncio.Event()
        index = ClusterIndex()
        hub = DestinationHub(index)
        feed = tasks.spawn(
            Feed(LocalSource(self.state_dir, interval=0.05), index, [hub.publish]).run(),
            name="feed",
        )
        server = grpc.aio.server()
        pb_grpc.add_DestinationServicer_to_server(DestinationService(hub), server)
        server.add_insecure_port(self.address)
        await server.start()
        self.ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop(grace=None)
            await tasks.cancel_all([feed])

    def start(self) -> None:
        self.thread.start()
        assert self.ready.wait(20), "control plane did not start"

    def stop(self) -> None:
        if self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(20)


# --- the world ---------------------------------------------------------------------------------


@dataclass
class World:
    prefix: str
    tmp: Path
    objects: ObjectDir
    cp: ControlPlane | None = None
    agent: subprocess.Popen[bytes] | None = None
    agent_log: Path | None = None
    admin_port: int = 4191
    servers: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _socks: list[socket.socket] = field(default_factory=list)

    @property
    def node(self) -> str:
        return f"{self.prefix}-node"

    def netns(self, pod: str) -> str:
        return f"{self.prefix}-{pod}"

    def netns_path(self, pod: str) -> str:
        return f"/run/netns/{self.netns(pod)}"

    @property
    def cni_socket(self) -> Path:
        return self.tmp / "cni.sock"

    @property
    def state_file(self) -> Path:
        return self.tmp / "agent-state.json"

    # agent -------------------------------------------------------------------------------------

    def start_agent(self, *extra: str) -> None:
        assert self.agent is None
        self.agent_log = self.tmp / "agent.log"
        log = open(self.agent_log, "ab")
        self.agent = subprocess.Popen(
            [
                "ip", "netns", "exec", self.node, *AGENT,
                "--node", "node1",
                "--cni-socket", str(self.cni_socket),
                "--state-file", str(self.state_file),
                "--controlplane", f"unix:{self.tmp / 'cp.sock'}",
                "--controlplane-insecure",
                "--admin-addr", f"127.0.0.1:{self.admin_port}",
                "--drain-seconds", "1",
                # No successor ever comes here: do not serve on waiting for one.
                "--handover-wait-seconds", "0.1",
                "--log-level", "debug",
                *extra,
            ],
            stdout=log,
            stderr=log,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.agent.poll() is None, f"agent exited: {self.log_text()}"
            try:
                if self.http("/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"agent not ready: {self.log_text()}")

    def stop_agent(self, sig: int = signal.SIGTERM) -> None:
        if self.agent is None:
            return
        self.agent.send_signal(sig)
        try:
            self.agent.wait(20)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            self.agent.wait(10)
        self.agent = None

    def log_text(self) -> str:
        return self.agent_log.read_text()[-4000:] if self.agent_log else ""

    def http(self, path: str) -> tuple[int, str]:
        s = socket_in_netns(self.node)
        with s:
            s.settimeout(5)
            s.connect(("127.0.0.1", self.admin_port))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in self.http("/metrics")[1].splitlines():
            if not line.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    # cni ---------------------------------------------------------------------------------------

    def cni(
        self, command: str, pod: str, *, container_id: str | None = None, name: str | None = None
    ) -> tuple[int, dict]:
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": "test",
            "type": "nodemesh-cni",
            "agentSocket": str(self.cni_socket),
            "logFile": "",
            "agentTimeoutSeconds": 15,
            "excludeNamespaces": [],
        }
        if command in ("ADD", "CHECK", "DEL"):
            conf["prevResult"] = {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": self.netns_path(pod)}],
                "ips": [{"address": f"{IPS[pod]}/24", "gateway": NODE_IP, "interface": 0}],
            }
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id or f"ctr-{pod}",
            "CNI_NETNS": self.netns_path(pod),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin",
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACES[pod]};"
            f"K8S_POD_NAME={name or pod};K8S_POD_UID=uid-{name or pod}",
        }
        done = subprocess.run(
            [str(PLUGIN)], input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60
        )
        out = json.loads(done.stdout) if done.stdout.strip() else {}
        return done.returncode, out

    # rules and traffic ----------------------------------------------------------------------

    def rules(self, pod: str) -> str:
        return normalise_save(
            sh("ip", "netns", "exec", self.netns(pod), "iptables-legacy-save", "-t", "nat")
        )

    def ip6_rules(self, pod: str) -> str:
        return normalise_save(
            sh("ip", "netns", "exec", self.netns(pod), "ip6tables-legacy-save", "-t", "filter")
        )

    def rule_count(self, pod: str) -> int:
        """Rules in the pod's nat table and its IPv6 filter (what nodemesh writes for it)."""
        text = self.rules(pod) + self.ip6_rules(pod)
        return sum(line.startswith("-A") for line in text.splitlines())

    def listening(self, pod: str) -> set[str]:
        ns = self.netns(pod)
        out = sh("ip", "netns", "exec", ns, "ss", "-Hlnt") + sh(
            "ip", "netns", "exec", ns, "ss", "-Hanu"
        )
        return {line.split()[3] for line in out.splitlines() if line.strip()}

    def tcp_server(self, pod: str, port: int) -> list[str]:
        """An echo server in `pod` that records its clients' addresses."""
        seen: list[str] = []
        s = socket_in_netns(self.netns(pod))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(16)
        s.settimeout(0.1)
        self._socks.append(s)

        def serve() -> None:
            while not self._stop.is_set():
                try:
                    conn, peer = s.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                seen.append(peer[0])
                with conn:
                    conn.settimeout(10)
                    data = b""
                    while chunk := conn.recv(65536):  # until the client half-closes
                        data += chunk
                    conn.sendall(b"echo:" + data)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        self.servers.append(t)
        return seen

    def udp_server(self, port: int) -> list[str]:
        """A UDP "resolver" in the node netns that answers b"re:" + the query."""
        seen: list[str] = []
        s = socket_in_netns(self.node, type=socket.SOCK_DGRAM)
        s.bind((NODE_IP, port))
        s.settimeout(0.1)
        self._socks.append(s)

        def serve() -> None:
            while not self._stop.is_set():
                try:
                    data, peer = s.recvfrom(2048)
                except TimeoutError:
                    continue
                except OSError:
                    return
                seen.append(peer[0])
                s.sendto(b"re:" + data, peer)

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        self.servers.append(t)
        return seen

    def request(self, pod: str, ip: str, port: int, payload: bytes) -> bytes:
        c = socket_in_netns(self.netns(pod))
        with c:
            c.settimeout(10)
            c.connect((ip, port))
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)  # half-close: the echo comes after it
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        return data

    def close_servers(self) -> None:
        self._stop.set()
        for t in self.servers:
            t.join(5)
        for s in self._socks:
            s.close()


def _build(prefix: str) -> None:
    node = f"{prefix}-node"
    sh("ip", "netns", "add", node)
    sh("ip", "-n", node, "link", "set", "lo", "up")
    sh("ip", "-n", node, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", node, "addr", "add", f"{NODE_IP}/24", "dev", "br0")
    sh("ip", "-n", node, "link", "set", "br0", "up")
    for pod, ip in IPS.items():
        ns = f"{prefix}-{pod}"
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        # Made inside the pod netns with its peer in the node netns: nothing touches the host.
        sh(
            "ip",
            "-n",
            ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            f"veth{pod}",
            "netns",
            node,
        )
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", node, "link", "set", f"veth{pod}", "master", "br0")
        sh("ip", "-n", node, "link", "set", f"veth{pod}", "up")
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {NODE_IP}\n")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    before = leakcheck.snapshot()
    prefix = f"nmt-ag-{secrets.token_hex(3)}"
    w = World(prefix=prefix, tmp=tmp_path, objects=ObjectDir(tmp_path))
    try:
        _build(prefix)
        w.objects.put(obj_namespace("shop", meshed=True))
        w.objects.put(obj_namespace("plain", meshed=False))
        w.objects.put(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}, "spec": {}}
        )
        for pod in IPS:
            w.objects.put(obj_pod(NAMESPACES[pod], pod, None, {"app": pod}))
        w.cp = ControlPlane(tmp_path, f"unix:{tmp_path / 'cp.sock'}")
        w.cp.start()
        yield w
    finally:
        w.stop_agent(signal.SIGKILL)
        w.close_servers()
        if w.cp is not None:
            w.cp.stop()
        for pod in [*IPS, "node"]:
            subprocess.run(["ip", "netns", "del", f"{prefix}-{pod}"], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / f"{prefix}-{pod}", ignore_errors=True)
    leakcheck.assert_no_leaks(before, leakcheck.snapshot(), only=lambda s: prefix in s)


# The nat table of the golden case whose probe source is this world's node (gateway and hostIP).
GOLDEN_DEFAULT = (GOLDEN / "enrolled.rules").read_text().split("# ")[1].split("\n", 1)[1]
GOLDEN_IP6 = (GOLDEN / "enrolled.rules").read_text().split("# ")[3].split("\n", 1)[1]
AGENT_LISTENERS = {"0.0.0.0:4140", "0.0.0.0:4141", "0.0.0.0:4143", "0.0.0.0:4153", "127.0.0.1:4153"}


def enrol_all(w: World) -> None:
    for pod in IPS:
        code, out = w.cni("ADD", pod)
        assert code == 0, out
        assert out["ips"][0]["address"] == f"{IPS[pod]}/24"  # prevResult passed through


# --- tests ---------------------------------------------------------------------------------------


def test_add_meshes_pods_proxies_traffic_and_del_removes_everything(world: World) -> None:
    w = world
    w.start_agent()
    enrol_all(w)
    for pod in ("a", "b"):
        assert w.rules(pod) == GOLDEN_DEFAULT
        assert AGENT_LISTENERS <= w.listening(pod)
    # The unmeshed namespace's pod is untouched.
    assert w.rule_count("c") == 0
    assert not AGENT_LISTENERS & w.listening("c")
    assert w.cni("CHECK", "a")[0] == 0

    seen_by_c = w.tcp_server("c", 8080)
    seen_by_b = w.tcp_server("b", 9090)
    # a -> c (unmeshed): through a's agent listener; the server sees a's own address.
    before = w.metric("tcp_open_total", direction="outbound", namespace="shop", pod="a")
    assert w.request("a", IPS["c"], 8080, b"hello c" * 1000) == b"echo:" + b"hello c" * 1000
    assert seen_by_c == [IPS["a"]]
    assert w.metric("tcp_open_total", direction="outbound", namespace="shop", pod="a") == before + 1
    assert (
        w.metric("tcp_close_total", direction="outbound", namespace="shop", pod="a") == before + 1
    )
    assert w.metric("tcp_read_bytes_total", direction="outbound", pod="a") >= 7000
    assert w.metric("tcp_write_bytes_total", direction="outbound", pod="a") >= 7005

    # c -> b: captured by b's inbound listener and handed to b's app.
    assert w.request("c", IPS["b"], 9090, b"to b") == b"echo:to b"
    assert w.metric("tcp_open_total", direction="inbound", namespace="shop", pod="b") == 1
    assert len(seen_by_b) == 1

    # 16 MiB each way: flow control holds, nothing is lost or reordered.
    bulk = os.urandom(1 << 24)
    assert w.request("a", IPS["c"], 8080, bulk) == b"echo:" + bulk

    # a -> b: both agents' listeners on the path.
    assert w.request("a", IPS["b"], 9090, b"a to b") == b"echo:a to b"
    assert w.metric("tcp_open_total", direction="inbound", pod="b") == 2
    assert w.metric("tcp_close_total", direction="inbound", pod="b") == 2

    # DNS: UDP/53 from a goes to the agent, which asks a's resolver from inside a's netns.
    seen_dns = w.udp_server(53)
    q = socket_in_netns(w.netns("a"), type=socket.SOCK_DGRAM)
    with q:
        q.settimeout(5)
        q.sendto(b"\x12\x34query", (NODE_IP, 53))
        answer, peer = q.recvfrom(2048)
    assert answer == b"re:\x12\x34query" and peer == (NODE_IP, 53)
    assert seen_dns == [IPS["a"]]
    assert w.metric("nodemesh_agent_dns_queries_total", pod="a", result="ok") == 1

    # DEL: rules and listeners gone; a second DEL is fine.
    for pod in ("a", "b"):
        assert w.cni("DEL", pod)[0] == 0
        assert w.rule_count(pod) == 0
        assert not AGENT_LISTENERS & w.listening(pod)
    assert w.cni("DEL", "a")[0] == 0
    assert w.cni("DEL", "c")[0] == 0
    assert json.loads(w.state_file.read_text())["pods"] == []


def test_add_with_agent_down_fails_with_try_again_later(world: World) -> None:
    code, out = world.cni("ADD", "a")
    assert code == 1 and out["code"] == 11, out
    assert world.rule_count("a") == 0
    # Once the agent is up the retried ADD goes through.
    world.start_agent()
    assert world.cni("ADD", "a")[0] == 0
    assert world.rules("a") == GOLDEN_DEFAULT


def test_pod_unknown_to_the_control_plane_is_try_again_later(world: World) -> None:
    world.start_agent("--pod-wait-seconds", "1")
    started = time.monotonic()
    code, out = world.cni("ADD", "a", container_id="ghost-ctr", name="ghost")
    assert code == 1 and out["code"] == 11, out
    assert "not yet known" in out["msg"]
    assert time.monotonic() - started >= 1.0  # it did wait for the control plane
    assert world.rule_count("a") == 0
    # Once the pod shows up, the runtime's retry succeeds.
    world.objects.put(obj_pod("shop", "ghost", None, {}))
    code, out = world.cni("ADD", "a", container_id="ghost-ctr", name="ghost")
    assert code == 0, out
    assert world.rules("a") == GOLDEN_DEFAULT


def test_restarting_the_agent_keeps_rules_and_listeners(world: World) -> None:
    w = world
    w.start_agent()
    enrol_all(w)
    counts = {pod: w.rule_count(pod) for pod in IPS}
    assert counts["a"] > 0 and counts["c"] == 0
    seen = w.tcp_server("c", 8080)
    for i in range(20):
        w.stop_agent(signal.SIGKILL if i % 2 else signal.SIGTERM)
        # With the agent gone, a's traffic fails closed: no listener, rules still redirect.
        if i == 0:
            with pytest.raises(OSError):
                w.request("a", IPS["c"], 8080, b"x")
            assert seen == []
        w.start_agent()
        assert {pod: w.rule_count(pod) for pod in IPS} == counts
    assert AGENT_LISTENERS <= w.listening("a")
    assert w.request("a", IPS["c"], 8080, b"after") == b"echo:after"
    assert seen == [IPS["a"]]
    assert w.cni("CHECK", "a")[0] == 0


def test_restart_repairs_removed_rules_and_forgets_vanished_pods(world: World) -> None:
    w = world
    w.start_agent()
    enrol_all(w)
    w.stop_agent()
    sh("ip", "netns", "exec", w.netns("a"), "iptables-legacy", "-t", "nat", "-F", "NODEMESH_OUTPUT")
    sh("ip", "netns", "exec", w.netns("a"), "ip6tables-legacy", "-F", "NODEMESH_OUTPUT")
    subprocess.run(["ip", "netns", "del", w.netns("b")], check=True)
    w.start_agent()
    assert w.rules("a") == GOLDEN_DEFAULT
    assert w.ip6_rules("a") == GOLDEN_IP6
    pods = {p["name"] for p in json.loads(w.state_file.read_text())["pods"]}
    assert pods == {"a", "c"}


def test_pods_running_before_the_agent_are_adopted(world: World) -> None:
    w = world
    w.start_agent()
    enrol_all(w)
    w.stop_agent()
    # A node reboot: the state file is gone, the pods came back without the agent.
    for pod, ip in IPS.items():
        w.objects.put(obj_pod(NAMESPACES[pod], pod, ip, {"app": pod}))
    w.state_file.unlink()
    for pod in ("a", "b"):
        sh("ip", "netns", "exec", w.netns(pod), "iptables-legacy", "-t", "nat", "-F")
        sh("ip", "netns", "exec", w.netns(pod), "iptables-legacy", "-t", "nat", "-X")
        sh("ip", "netns", "exec", w.netns(pod), "ip6tables-legacy", "-F")
        sh("ip", "netns", "exec", w.netns(pod), "ip6tables-legacy", "-X")
    w.start_agent()
    deadline = time.monotonic() + 20
    # The IPv6 table is written after the nat table, in the same job.
    while time.monotonic() < deadline and not all(
        w.ip6_rules(pod) == GOLDEN_IP6 for pod in ("a", "b")
    ):
        time.sleep(0.2)
    for pod in ("a", "b"):
        assert w.rules(pod) == GOLDEN_DEFAULT, f"{pod}: {w.log_text()}"
        assert w.ip6_rules(pod) == GOLDEN_IP6
        assert AGENT_LISTENERS <= w.listening(pod)
    assert w.rule_count("c") == 0
    # A later DEL from the runtime finds the adopted pod by its netns.
    assert w.cni("DEL", "a")[0] == 0
    assert w.rule_count("a") == 0


def test_unmeshing_the_namespace_removes_rules_and_listeners(world: World) -> None:
    w = world
    w.start_agent()
    enrol_all(w)
    w.objects.put(obj_namespace("shop", meshed=False))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (w.rule_count("a") or w.rule_count("b")):
        time.sleep(0.2)
    for pod in ("a", "b"):
        assert w.rule_count(pod) == 0
        assert not AGENT_LISTENERS & w.listening(pod)
    seen = w.tcp_server("c", 8080)
    assert w.request("a", IPS["c"], 8080, b"direct") == b"echo:direct"
    assert seen == [IPS["a"]]
    # Meshing it again enrols the running pods again.
    w.objects.put(obj_namespace("shop", meshed=True))
    while time.monotonic() < deadline + 20 and w.rule_count("a") == 0:
        time.sleep(0.2)
    assert w.rules("a") == GOLDEN_DEFAULT
    assert AGENT_LISTENERS <= w.listening("a")
