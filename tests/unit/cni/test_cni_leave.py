"""install-cni leaving a node: only when its DaemonSet goes, byte-exact, with the agent told.

A watch stopped while its DaemonSet stays (restart, rollout) keeps nodemesh-cni; one stopped
because the DaemonSet or its namespace is gone restores the node, asks a running agent (the
uninstall flag) to un-mesh running pods, and removes nodemesh's run-dir files. The executable on
a node doubles as install-cni, so a node missed by the DaemonSet is cleaned up there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cni_harness import NODE_PATH
from nodemesh_cni.owner import KubernetesOwner
from test_cni_install import place, plugins_of, snapshot

DS_PATH = "/apis/apps/v1/namespaces/nodemesh/daemonsets/nodemesh-agent"
NS_PATH = "/api/v1/namespaces/nodemesh"


@pytest.fixture
def node(tmp_path: Path, sock_dir: Path) -> dict[str, Path]:
    conf, bin_, objects = tmp_path / "net.d", tmp_path / "bin", tmp_path / "objects"
    for d in (conf, bin_, objects / "DaemonSet" / "nodemesh", objects / "Namespace"):
        d.mkdir(parents=True)
    (objects / "DaemonSet" / "nodemesh" / "nodemesh-agent.yaml").write_text("kind: DaemonSet\n")
    (objects / "Namespace" / "nodemesh.yaml").write_text("kind: Namespace\n")
    place(conf, "10-calico.conflist")
    return {"conf": conf, "bin": bin_, "objects": objects, "run": sock_dir}


class FakeAgent:
    """Listens on the CNI socket path; on the uninstall flag, records it and removes it."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(run / "cni.sock"))
        self.sock.listen(8)
        (run / "agent-state.json").write_text('{"version": 1, "pods": []}')
        (run / "meshed-namespaces.json").write_text('{"version": 1, "namespaces": ["shop"]}')
        self.flags: list[dict[str, object]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        flag = self.run / "uninstalling"
        while not self._stop.wait(0.05):
            if flag.exists():
                self.flags.append(json.loads(flag.read_text()))
                (self.run / "agent-state.json").unlink()
                flag.unlink()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        (self.run / "cni.sock").unlink(missing_ok=True)


@pytest.fixture
def fake_agent(node: dict[str, Path]) -> Iterator[FakeAgent]:
    agent = FakeAgent(node["run"])
    yield agent
    agent.close()


def _watch(node: dict[str, Path], plugin: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nodemesh_cni.install", "watch",
         "--conf-dir", str(node["conf"]), "--bin-dir", str(node["bin"]),
         "--plugin", str(plugin), "--interval", "0.05",
         "--agent-socket", str(node["run"] / "cni.sock"), "--agent-wait", "5", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    err = proc.stderr.read()
    proc.stderr.close()
    return err


def _installed(node: dict[str, Path]) -> bool:
    conflist = node["conf"] / "10-calico.conflist"
    return (
        plugins_of(conflist)[-1]["type"] == "nodemesh-cni"
        and (node["bin"] / "nodemesh-cni").exists()
    )


def _wait(check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _lab_owner(node: dict[str, Path]) -> list[str]:
    return ["--daemonset", "nodemesh/nodemesh-agent", "--objects-dir", str(node["objects"])]


def test_a_stop_while_the_daemonset_stays_keeps_the_plugin(
    node: dict[str, Path], zipapp_plugin: Path, fake_agent: FakeAgent
) -> None:
    proc = _watch(node, zipapp_plugin, *_lab_owner(node))
    _wait(lambda: _installed(node))
    err = _stop(proc)
    assert _installed(node), err
    assert "nodemesh-cni stays on this node: daemonset nodemesh/nodemesh-agent is in place" in err
    assert fake_agent.flags == []
    assert (node["run"] / "meshed-namespaces.json").exists()


@pytest.mark.parametrize(
    "gone", ["DaemonSet/nodemesh/nodemesh-agent.yaml", "Namespace/nodemesh.yaml"]
)
def test_a_stop_because_the_daemonset_went_restores_the_node_and_tells_the_agent(
    node: dict[str, Path], zipapp_plugin: Path, fake_agent: FakeAgent, gone: str
) -> None:
    before_conf, before_bin = snapshot(node["conf"]), snapshot(node["bin"])
    proc = _watch(node, zipapp_plugin, *_lab_owner(node))
    _wait(lambda: _installed(node))
    (node["objects"] / gone).unlink()
    err = _stop(proc)
    assert snapshot(node["conf"]) == before_conf, err
    assert snapshot(node["bin"]) == before_bin
    assert [f["reason"] for f in fake_agent.flags] == [
        f"{gone.split('/')[0].lower()} nodemesh{'/nodemesh-agent' if 'Daemon' in gone else ''} "
        f"is gone ({node['objects'] / gone})"
    ], err
    assert "the agent took its rules out of the running pods" in err
    # Only the agent's live socket is left in the run dir (the agent removes it as it stops).
    assert sorted(p.name for p in node["run"].iterdir()) == ["cni.sock"]


def test_a_daemonset_not_seen_at_start_up_is_looked_for_again(
    node: dict[str, Path], zipapp_plugin: Path, fake_agent: FakeAgent
) -> None:
    ds = node["objects"] / "DaemonSet" / "nodemesh" / "nodemesh-agent.yaml"
    ds.unlink()  # not (yet) there when install-cni starts: it cannot tell, so it would stay
    before = snapshot(node["conf"])
    proc = _watch(node, zipapp_plugin, *_lab_owner(node), "--owner-recheck", "0.2")
    _wait(lambda: _installed(node))
    ds.write_text("kind: DaemonSet\n")
    time.sleep(1.5)  # a few re-checks
    ds.unlink()
    err = _stop(proc)
    assert "cannot tell an uninstall from a restart yet" in err
    assert snapshot(node["conf"]) == before, err
    assert len(fake_agent.flags) == 1


def test_without_an_agent_the_node_is_restored_and_the_stuck_pods_are_named(
    node: dict[str, Path], zipapp_plugin: Path
) -> None:
    before = snapshot(node["conf"])
    state = {"version": 1, "pods": [{"namespace": "shop", "name": "cart-1", "meshed": True}]}
    (node["run"] / "agent-state.json").write_text(json.dumps(state))
    # The agent's saved keys (nodeagent.handover.servingstate) go too, with no agent there to remove them.
    (node["run"] / "agent-private").mkdir(mode=0o700)
    (node["run"] / "agent-private" / "serving.json").write_text("{}")
    done = subprocess.run(
        [sys.executable, "-m", "nodemesh_cni.install", "uninstall",
         "--conf-dir", str(node["conf"]), "--bin-dir", str(node["bin"]),
         "--agent-socket", str(node["run"] / "cni.sock")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert snapshot(node["conf"]) == before
    assert "restart these, their traffic is still redirected to the agent: shop/cart-1" in (
        done.stderr
    )
    assert list(node["run"].iterdir()) == []


def test_uninstall_pointed_at_the_wrong_directory_says_so(tmp_path: Path) -> None:
    # Inside the install-cni container the node's dir is /host/etc/cni/net.d: this used to
    # succeed silently having done nothing.
    done = subprocess.run(
        [sys.executable, "-m", "nodemesh_cni.install", "uninstall",
         "--conf-dir", str(tmp_path / "etc/cni/net.d"), "--bin-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert f"CNI conf dir {tmp_path / 'etc/cni/net.d'} does not exist" in done.stderr


def test_the_executable_on_the_node_uninstalls_itself(
    node: dict[str, Path], zipapp_plugin: Path
) -> None:
    """The fix-up for a node the DaemonSet missed: nothing but the node's python3 and the
    executable install-cni left in its bin dir."""
    before = snapshot(node["conf"])
    installed = subprocess.run(
        [sys.executable, "-m", "nodemesh_cni.install", "install", "--conf-dir", str(node["conf"]),
         "--bin-dir", str(node["bin"]), "--plugin", str(zipapp_plugin)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    executable = node["bin"] / "nodemesh-cni"
    done = subprocess.run(
        [str(executable), "uninstall", "--conf-dir", str(node["conf"]), "--bin-dir",
         str(node["bin"]), "--agent-socket", str(node["run"] / "cni.sock")],
        capture_output=True, text=True, timeout=60, env={"PATH": NODE_PATH},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert snapshot(node["conf"]) == before
    assert list(node["bin"].iterdir()) == []


# --- asking the API server --------------------------------------------------------------------


class FakeApi(BaseHTTPRequestHandler):
    answers: dict[str, tuple[int, dict[str, object]]] = {}
    tokens: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        self.tokens.append(self.headers.get("Authorization", ""))
        status, body = self.answers.get(self.path, (404, {}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[str, type[FakeApi]]]:
    handler = type("Api", (FakeApi,), {"answers": {}, "tokens": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


HEALTHY = {DS_PATH: (200, {"metadata": {"name": "nodemesh-agent"}}), NS_PATH: (200, {})}
DELETING = {"metadata": {"deletionTimestamp": "2026-12-01T21:00:00Z"}}


@pytest.mark.parametrize(
    "later, leaving, reason",
    [
        ({}, False, "daemonset nodemesh/nodemesh-agent is in place"),
        ({DS_PATH: (404, {})}, True, "daemonset nodemesh/nodemesh-agent is gone"),
        ({DS_PATH: (200, DELETING)}, True, "daemonset nodemesh/nodemesh-agent is being deleted"),
        ({NS_PATH: (200, DELETING)}, True, "namespace nodemesh is being deleted"),
        ({DS_PATH: (403, {})}, True, "access to daemonset nodemesh/nodemesh-agent was removed"),
        ({NS_PATH: (401, {})}, True, "access to namespace nodemesh was removed (HTTP 401)"),
        ({DS_PATH: (503, {})}, False, "HTTP 503 reading daemonset"),
    ],
)  # fmt: skip
def test_the_api_server_tells_an_uninstall_from_a_restart(
    api: tuple[str, type[FakeApi]], tmp_path: Path, later: dict[str, object], leaving: bool,
    reason: str,
) -> None:  # fmt: skip
    url, handler = api
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    handler.answers.update(HEALTHY)
    owner = KubernetesOwner("nodemesh", "nodemesh-agent", server=url, token_file=token)
    assert owner.check_access().known
    handler.answers.update(later)  # type: ignore[arg-type]
    verdict = owner.verdict()
    assert (verdict.leaving, reason in verdict.reason) == (leaving, True), verdict
    assert set(handler.tokens) == {"Bearer s3cret"}


def test_without_access_at_start_up_a_stop_never_uninstalls(
    api: tuple[str, type[FakeApi]],
) -> None:
    url, handler = api
    handler.answers.update({DS_PATH: (403, {}), NS_PATH: (403, {})})
    owner = KubernetesOwner("nodemesh", "nodemesh-agent", server=url, token_file=None)
    checked = owner.check_access()
    assert not checked.known and "check nodemesh's RBAC" in checked.reason
    handler.answers[DS_PATH] = (404, {})
    assert not owner.verdict().leaving


def test_an_unreachable_api_server_keeps_the_plugin() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    owner = KubernetesOwner("nodemesh", "nodemesh-agent", server=f"http://127.0.0.1:{port}",
                            token_file=None, timeout=1)  # fmt: skip
    owner.access_checked = True
    verdict = owner.verdict()
    assert not verdict.leaving and not verdict.known and "not reachable" in verdict.reason


def test_in_cluster_needs_the_pod_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from nodemesh_cni.owner import OwnerError

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(OwnerError, match="KUBERNETES_SERVICE_HOST is not set"):
        KubernetesOwner.in_cluster("nodemesh", "nodemesh-agent")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert KubernetesOwner.in_cluster("a", "b").server == "https://[fd00::1]:443"
    assert os.environ["KUBERNETES_SERVICE_HOST"] == "fd00::1"
