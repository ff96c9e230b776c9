"""What the lab tests share: the nodemesh CLI run as a user runs it, a two-node lab brought up
for a fixture and always taken down, and the lab's pods as `lab status` lists them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from nodemesh.lab.paths import LabPaths
from tests.outcome import FAILED

NODEMESH = str(Path(sys.executable).parent / "nodemesh")
DEMO = ("--demo", "--demo-port", "0")  # `lab up` args: emojivoto, forwarded to no fixed port


def run(
    *args: str,
    check: bool = True,
    stdin: str | None = None,
    timeout: float = 300,
    traceback_ok: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`nodemesh ARGS`; with `check`, fails the test (showing its output) unless it exits 0;
    without `traceback_ok`, fails it if the CLI printed a traceback, whatever its exit code."""
    res = subprocess.run(
        [NODEMESH, *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert res.returncode == 0, f"nodemesh {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    if not traceback_ok:
        assert "Traceback" not in res.stderr, res.stderr
    return res


def nm(*args: str, timeout: float = 300) -> str:
    """The standard output of `nodemesh ARGS`, which must exit 0."""
    return run(*args, timeout=timeout).stdout


@contextmanager
def lab_up(prefix: str, *args: str, timeout: float = 300) -> Iterator[LabPaths]:
    """A two-node lab named `prefix` + 6 hex digits (choose a prefix no other test uses: the
    leak check can be told to look at it alone), forwarding to no fixed local port; `args` go
    to `lab up`. Taken down afterwards whatever happened."""
    name = prefix + uuid.uuid4().hex[:6]
    try:
        nm("lab", "up", "--name", name, "--nodes", "2", "--api-port", "0",
           "--dashboard-port", "0", *args, timeout=timeout)  # fmt: skip
        yield LabPaths(name)
    finally:
        subprocess.run([NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300)


# What a lab log line looks like when it is worth reading after a failure: our components' log
# levels, Python tracebacks, and access-log style 5xx answers.
_WORTH_READING = re.compile(r"\b(ERROR|CRITICAL|WARNING|Traceback)\b|\s5\d\d[\s:]")


_KEPT = {".log", ".yaml", ".json", ".jsonl", ".txt", ".conf"}
_SECRET = {"identity", "access", "apiserver", "volumes"}  # keys and tokens stay in the lab


def show_lab_logs(request: pytest.FixtureRequest, paths: LabPaths, *more: Path) -> None:
    """If the test failed, prints the lab's log lines worth reading (pytest shows them under
    the failed test's "Captured stdout teardown"), per file, bounded; with
    NODEMESH_KEEP_FAILED_LABS=DIR also copies the lab's directory and `more` under DIR. Call
    it before the lab is taken down."""
    if not request.node.stash.get(FAILED, False) or not paths.root.is_dir():
        return
    keep = os.environ.get("NODEMESH_KEEP_FAILED_LABS")
    if keep:
        # Regular files only: the lab's directory also holds network namespaces' mount points
        # and sockets, which cannot be copied.
        dest = Path(keep) / paths.name
        for i, top in enumerate((paths.root, *more)):
            for f in top.rglob("*"):
                if (f.suffix in _KEPT and not _SECRET.intersection(f.relative_to(top).parts)
                        and f.is_file() and not f.is_symlink()):  # fmt: skip
                    to = dest / str(i) / f.relative_to(top)
                    to.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        shutil.copyfile(f, to)
                    except OSError as exc:
                        print(f"not kept: {f}: {exc}")
        print(f"lab {paths.name}: its logs and objects kept in {dest}/0, {len(more)} more after")
    printed = 0
    for log in sorted(paths.root.rglob("*.log")):
        try:
            lines = [ln for ln in log.read_text(errors="replace").splitlines()
                     if _WORTH_READING.search(ln)]  # fmt: skip
        except OSError:
            continue
        if not lines:
            continue
        print(f"--- {log.relative_to(paths.root)}: {len(lines)} lines worth reading, the last:")
        for ln in lines[-12:]:
            print("   ", ln[:400])
        printed += 1
        if printed >= 25:
            print("--- (more logs not shown)")
            break


def deployment(ns: str, name: str, pod_spec: str, *, node: str = "", replicas: int = 1) -> str:
    """A Deployment as a YAML document (with its leading `---`) whose pods carry `app: NAME`;
    `pod_spec` is the pod's spec body (containers, volumes) indented by six spaces; `node`
    pins the pods to that lab node."""
    pinned = f"      nodeSelector: {{kubernetes.io/hostname: {node}}}\n" if node else ""
    return f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
{pinned}{pod_spec}"""


def pods(paths: LabPaths, ns: str) -> list[dict[str, Any]]:
    """The pods of namespace `ns`, as `lab status -o json` lists them."""
    st = json.loads(nm("lab", "status", "--name", paths.name, "-o", "json"))
    return [p for p in st["pods"] if p["namespace"] == ns]


def agent_pid(paths: LabPaths, node: str) -> int:
    """The nodemesh-agent process in `node`'s network namespace."""
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
