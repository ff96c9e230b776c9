"""The observing CLI against a real lab: it finds the lab by itself (and with --lab), `version`
shows both versions, `stat` lists emojivoto's deployments as meshed, `stat node` both agents,
`check` passes, and fails with a hint once an agent stops answering."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from nodemesh.lab.paths import LabPaths

pytestmark = [pytest.mark.root, pytest.mark.lab]

NODEMESH = str(Path(sys.executable).parent / "nodemesh")


def nm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([NODEMESH, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, f"nodemesh {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    return res


@pytest.fixture
def lab() -> Iterator[LabPaths]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the lab creates network namespaces")
    name = "cli" + uuid.uuid4().hex[:6]
    try:
        nm("lab", "up", "--name", name, "--nodes", "2", "--api-port", "0", "--dashboard-port", "0", "--demo",
           "--demo-port", "0")  # fmt: skip
        yield LabPaths(name)
    finally:
        subprocess.run([NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300)


def agent_pid(paths: LabPaths, node: str) -> int:
    out = subprocess.run(["ip", "netns", "pids", paths.node_netns(node)], capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    for pid in out:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"nodemesh-agent") for part in cmdline[:2]):
            return int(pid)
    raise AssertionError(f"no nodemesh-agent process in {paths.node_netns(node)}")


def check_until_ok(lab: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        res = nm("check", "--lab", lab, check=False)
        if res.returncode == 0 or time.monotonic() > deadline:
            assert res.returncode == 0, res.stdout + res.stderr
            return res.stdout
        time.sleep(2)


def test_cli_against_the_lab(lab: LabPaths) -> None:
    version = nm("version", "--lab", lab.name).stdout
    assert version.startswith("Client version: 0.1.0\nServer version: 0.1.0 (lab")

    out = check_until_ok(lab.name)
    assert "[ok]   node1: agent ready" in out and "[ok]   node2: agent ready" in out
    assert "emojivoto/web-" in out and "rules and listeners in place" in out
    assert "[FAIL]" not in out

    rows = json.loads(nm("stat", "deploy", "-n", "emojivoto", "--lab", lab.name,
                         "-o", "json").stdout)["rows"]  # fmt: skip
    by_name = {r["name"]: r for r in rows}
    assert sorted(by_name) == ["emoji", "vote-bot", "voting", "web"]
    assert all(r["meshed_pods"] == r["total_pods"] == 1 for r in rows)
    table = nm("stat", "deploy", "-n", "emojivoto", "--lab", lab.name).stdout.splitlines()
    assert table[0].split()[:3] == ["NAMESPACE", "NAME", "MESHED"]
    assert {line.split()[1]: line.split()[2] for line in table[1:]} == {
        "emoji": "1/1", "vote-bot": "1/1", "voting": "1/1", "web": "1/1"}  # fmt: skip

    # mesh enable/disable re-applies the lab's Namespace object with the label changed.
    ns_file = lab.objects / "Namespace" / "default.yaml"
    nm("mesh", "enable", "default", "--lab", lab.name)
    assert (
        yaml.safe_load(ns_file.read_text())["metadata"]["labels"]["nodemesh.io/mesh"] == "enabled"
    )
    nm("mesh", "disable", "default", "--lab", lab.name)
    labels = yaml.safe_load(ns_file.read_text())["metadata"].get("labels") or {}
    assert "nodemesh.io/mesh" not in labels
    res = nm("mesh", "enable", "nosuch", "--lab", lab.name, check=False)
    assert res.returncode == 1 and "namespace 'nosuch' does not exist" in res.stderr

    nodes = nm("stat", "node", "--lab", lab.name, "-o", "json").stdout
    assert [r["name"] for r in json.loads(nodes)["rows"]] == ["node1", "node2"]

    # Stop (not kill: the lab would restart it) the agent of node2: check must fail, with a hint.
    pid = agent_pid(lab, "node2")
    os.kill(pid, signal.SIGSTOP)
    try:
        res = nm("check", "--lab", lab.name, check=False)
        assert res.returncode == 1, res.stdout
        failed = [line for line in res.stdout.splitlines() if line.startswith("[FAIL]")]
        assert failed and failed[0].startswith("[FAIL] node2: agent ready"), res.stdout
        assert "hint:" in res.stdout and "Status check results are FAIL" in res.stdout
        assert "[ok]   node1: agent ready" in res.stdout
    finally:
        os.kill(pid, signal.SIGCONT)
