"""The lab as the benchmark drives it: the `nodemesh lab` CLI, pod lookup, agent processes."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodemesh.lab.ledger import Ledger, same_process
from nodemesh.lab.paths import LabPaths
from nodemesh.lab.procs import children

NODEMESH = str(Path(sys.executable).parent / "nodemesh")


class LabError(RuntimeError):
    pass


def nm(*args: str, timeout: float = 300) -> str:
    res = subprocess.run([NODEMESH, *args], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise LabError(f"nodemesh {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res.stdout


@dataclass
class Lab:
    name: str

    @property
    def paths(self) -> LabPaths:
        return LabPaths(self.name)

    def up(self, *, nodes: int = 2) -> None:
        nm("lab", "up", "--name", self.name, "--nodes", str(nodes), "--api-port", "0",
           "--dashboard-port", "0")  # fmt: skip

    def down(self) -> None:
        subprocess.run(
            [NODEMESH, "lab", "down", "--name", self.name], capture_output=True, timeout=300
        )

    def status(self) -> dict[str, Any]:
        return json.loads(nm("lab", "status", "--name", self.name, "-o", "json"))  # type: ignore[no-any-return]

    def apply(self, text: str, *, timeout: int = 180) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".yml", prefix="bench-") as f:
            f.write(text)
            f.flush()
            nm("lab", "apply", "--name", self.name, "-f", f.name, "--wait",
               "--timeout", str(timeout), timeout=timeout + 30)  # fmt: skip

    def delete(self, text: str, *, namespace: str, timeout: float = 180) -> None:
        """Delete the objects and wait until the namespace has no pod left."""
        with tempfile.NamedTemporaryFile("w", suffix=".yml", prefix="bench-") as f:
            f.write(text)
            f.flush()
            nm("lab", "delete", "--name", self.name, "-f", f.name)
        deadline = time.monotonic() + timeout
        while any(p["namespace"] == namespace for p in self.status()["pods"]):
            if time.monotonic() > deadline:
                raise LabError(f"pods of {namespace} still there after {timeout:.0f} s")
            time.sleep(1)

    def pod(self, namespace: str, prefix: str) -> dict[str, Any]:
        """The ready pod of Deployment `prefix` in `namespace`."""
        for p in self.status()["pods"]:
            if p["namespace"] == namespace and p["name"].startswith(prefix + "-") and p["ready"]:
                return p  # type: ignore[no-any-return]
        raise LabError(f"no ready pod {prefix} in {namespace}")

    def pods(self, namespace: str, prefix: str) -> list[dict[str, Any]]:
        """The ready pods of Deployment `prefix` in `namespace`, by name."""
        return sorted(
            (p for p in self.status()["pods"]
             if p["namespace"] == namespace and p["name"].startswith(prefix + "-") and p["ready"]),
            key=lambda p: str(p["name"]),
        )  # fmt: skip

    def pod_netns(self, pod: dict[str, Any]) -> str:
        return self.paths.pod_netns(pod["namespace"], pod["name"])

    def service_ip(self, namespace: str, name: str) -> str:
        for s in self.status()["services"]:
            if s["namespace"] == namespace and s["name"] == name:
                return str(s["clusterIP"])
        raise LabError(f"no service {namespace}/{name}")

    def container_pids(self, *, namespace: str, pod_prefix: str, container: str) -> dict[str, int]:
        """node -> PID of the live `container` process of each pod `pod_prefix-*`, from the
        lab's ledger (the newest entry wins: a restarted container gets a new one)."""
        return self._container_pids(namespace, pod_prefix, container, by_pod=False)

    def container_pids_by_pod(
        self, *, namespace: str, pod_prefix: str, container: str
    ) -> dict[str, int]:
        """pod name -> PID, as `container_pids` (for several such pods on one node)."""
        return self._container_pids(namespace, pod_prefix, container, by_pod=True)

    def _container_pids(
        self, namespace: str, pod_prefix: str, container: str, *, by_pod: bool
    ) -> dict[str, int]:
        nodes = {
            p["name"]: p["node"]
            for p in self.status()["pods"]
            if p["namespace"] == namespace and p["name"].startswith(pod_prefix + "-")
        }
        found: dict[str, int] = {}
        for entry in Ledger(self.paths.ledger).entries():
            if entry.kind != "process":
                continue
            role = str(entry.data.get("role", ""))
            for pod, node in nodes.items():
                if role == f"container {namespace}/{pod}/{container}" and same_process(
                    entry.data["pid"], entry.data.get("start")
                ):
                    # The ledger holds the container's wrapper; the work is its child's.
                    inits = children(int(entry.data["pid"]))
                    if inits:
                        found[pod if by_pod else node] = inits[0]
        return found

    def agent_pids(self) -> dict[str, int]:
        pids = self.container_pids(namespace="nodemesh", pod_prefix="nodemesh-agent",
                                   container="agent")  # fmt: skip
        if not pids:
            raise LabError("no running node agent found in the lab's ledger")
        return pids
