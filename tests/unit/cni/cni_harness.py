"""Test harness for nodemesh-cni: a runtime-like runner, a test agent, CNI configs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from nodemesh_cni.protocol import FrameBuffer, Reply, Request, decode_request, encode_reply

REPO = Path(__file__).resolve().parents[3]
VENV_PLUGIN = Path(sys.executable).parent / "nodemesh-cni"
BUILD_SCRIPT = REPO / "cni-plugin" / "build.sh"
# What a container runtime on a Debian node passes down: a plain PATH, so the zipapp's
# "#!/usr/bin/env python3" finds the system interpreter.
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Outcome:
    """One plugin run as the runtime sees it."""

    def __init__(self, proc: subprocess.CompletedProcess[bytes], elapsed: float) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr.decode(errors="replace")
        self.elapsed = elapsed

    def json(self) -> dict[str, object]:
        """stdout as the single JSON document it must be (nothing else may be on it)."""
        text = self.stdout.decode()
        doc = json.loads(text)  # raises if anything but one JSON value was printed
        assert isinstance(doc, dict)
        return doc

    def error(self) -> dict[str, object]:
        assert self.returncode != 0, f"expected a failure, got {self.stdout!r}"
        doc = self.json()
        assert set(doc) == {"cniVersion", "code", "msg", "details"}, doc
        assert isinstance(doc["code"], int) and isinstance(doc["msg"], str) and doc["msg"]
        return doc

    def succeeded_silently(self) -> None:
        assert self.returncode == 0, (self.stdout, self.stderr)
        assert self.stdout == b"", f"stdout must stay empty, got {self.stdout!r}"


def run_plugin(
    executable: Path,
    *,
    command: str | None,
    config: dict[str, object] | bytes | None = None,
    container_id: str | None = "0123456789abcdef",
    netns: str | None = "/var/run/netns/cni-1234",
    ifname: str | None = "eth0",
    cni_args: str | None = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-7d4;"
    "K8S_POD_UID=5c1b-77;K8S_POD_INFRA_CONTAINER_ID=0123456789abcdef",
    timeout: float = 30,
) -> Outcome:
    """Run the plugin with env and stdin the way a container runtime does."""
    env = {"PATH": NODE_PATH, "CNI_PATH": "/opt/cni/bin:/usr/lib/cni"}
    for key, value in (
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
        ("CNI_ARGS", cni_args),
    ):
        if value is not None:
            env[key] = value
    stdin = config if isinstance(config, bytes) else json.dumps(config or {}).encode()
    start = time.perf_counter()
    proc = subprocess.run(
        [str(executable)], input=stdin, env=env, capture_output=True, timeout=timeout
    )
    return Outcome(proc, time.perf_counter() - start)


Responder = Callable[[Request], "Reply | None"]


class TestAgent:
    """A small node agent: speaks nodemesh_cni.protocol on a unix socket from a thread.

    `respond` maps each request to a reply; None means "hang up without answering". `delay`
    holds every reply back, `hang` keeps the connection open and silent.
    """

    __test__ = False  # not a test class, despite the name

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[Request] = []
        self.respond: Responder = lambda req: Reply.to(req, status="ok", meshed=True)
        self.delay = 0.0
        self.hang = False
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        os.chmod(path, 0o600)
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, name="test-agent", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        buffer = FrameBuffer()
        frames: list[bytes] = []
        while not frames:
            data = conn.recv(65536)
            if not data:
                return
            frames = buffer.feed(data)
        request = decode_request(frames[0])
        self.requests.append(request)
        if self.hang:
            self._stop.wait(10)
            return
        if self.delay:
            time.sleep(self.delay)
        reply = self.respond(request)
        if reply is not None:
            conn.sendall(encode_reply(reply))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self._sock.close()
        self.path.unlink(missing_ok=True)
        assert not self._thread.is_alive()


def interfaces_result(version: str) -> dict[str, object]:
    """A bridge-plugin-shaped result in the layout of `version` (0.x results carry ips.version)."""
    ip: dict[str, object] = {
        "address": "10.244.1.17/24",
        "gateway": "10.244.1.1",
        "interface": 2,
    }
    if version.startswith("0."):
        ip = {"version": "4", **ip}
    return {
        "cniVersion": version,
        "interfaces": [
            {"name": "cni0", "mac": "9a:3c:1f:00:00:01"},
            {"name": "veth5a1b2c3d", "mac": "9a:3c:1f:00:00:02"},
            {"name": "eth0", "mac": "2e:7f:81:00:00:11", "sandbox": "/var/run/netns/cni-1234"},
        ],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["shop.svc.cluster.local"]},
    }


def plugin_config(
    version: str,
    *,
    socket_path: Path | str = "/tmp/nmcni-no-such-dir/cni.sock",
    log_file: Path | str = "",
    prev_result: bool = True,
    **extra: object,
) -> dict[str, object]:
    """The nodemesh-cni entry as the runtime passes it (name and cniVersion injected)."""
    conf: dict[str, object] = {
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "nodemesh-cni",
        "agentSocket": str(socket_path),
        "logFile": str(log_file),
        **extra,
    }
    if prev_result:
        conf["prevResult"] = interfaces_result(version)
    return conf
