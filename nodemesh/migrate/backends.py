"""Where `nodemesh migrate` reads and writes objects: a lab on this machine, or a cluster
through kubectl. Both read the same kinds and apply a step's changes in order."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from nodemesh.lab.client import LabClient, LabRequestFailed, LabUnavailable
from nodemesh.lab.paths import LabPaths
from nodemesh.migrate.plan import Change

# Nodes: their addresses tell apps sending through nodemesh's router mode (HTTP_PROXY=<node>:4144).
KINDS = ("Namespace", "Deployment", "DaemonSet", "StatefulSet", "Service", "Ingress", "Node")
ROLLED_KINDS = ("Deployment", "DaemonSet", "StatefulSet")


class BackendError(RuntimeError):
    """The lab or the cluster refused or failed a read or a change; the message says which."""


class Backend(Protocol):
    where: str

    def objects(self) -> list[dict[str, Any]]: ...

    def apply(self, changes: Sequence[Change]) -> list[str]: ...

    def rolled_out(self, kind: str, namespace: str, name: str) -> bool: ...


def _doc(change: Change) -> dict[str, Any]:
    assert change.after is not None
    return change.after


class LabBackend:
    def __init__(self, paths: LabPaths) -> None:
        self.paths = paths
        self.where = f"lab {paths.name!r}"

    def _read(self, kind: str) -> list[dict[str, Any]]:
        out = []
        for path in sorted((self.paths.objects / kind).rglob("*.yaml")):
            try:
                obj = yaml.safe_load(path.read_text())
            except FileNotFoundError:  # deleted while we listed
                continue
            if obj:
                out.append(obj)
        return out

    def objects(self) -> list[dict[str, Any]]:
        if not Path(self.paths.objects).is_dir():
            raise BackendError(f"{self.where} has no objects (is it up?)")
        return [o for kind in KINDS for o in self._read(kind)]

    def _call(self, request: dict[str, Any]) -> list[str]:
        try:
            results: list[str] = LabClient(self.paths).call(request)["results"]
        except (LabUnavailable, LabRequestFailed) as e:
            raise BackendError(f"{self.where}: {e}") from None
        return results

    def apply(self, changes: Sequence[Change]) -> list[str]:
        said: list[str] = []
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            if batch:
                docs = [{"obj": obj, "index": i + 1} for i, obj in enumerate(batch)]
                said.extend(self._call({"op": "apply", "docs": docs, "source": "nodemesh migrate"}))
                batch.clear()

        for c in changes:
            if c.after is not None:
                batch.append(_doc(c))
                continue
            flush()
            ref = {"kind": c.kind, "namespace": c.namespace, "name": c.name}
            said.extend(self._call({"op": "delete", "refs": [ref]}))
        flush()
        return said

    def rolled_out(self, kind: str, namespace: str, name: str) -> bool:
        """Every pod of the workload runs its current template and is ready (no old pod)."""
        from nodemesh.lab import objects as labobjects

        wl = next(
            (o for o in self._read(kind) if o["metadata"]["name"] == name
             and o["metadata"].get("namespace") == namespace),
            None,
        )  # fmt: skip
        if wl is None:
            return True  # deleted
        uid = wl["metadata"]["uid"]
        owners = {uid}
        if kind == "Deployment":
            owners = {
                rs["metadata"]["uid"]
                for rs in self._read("ReplicaSet")
                if any(r.get("uid") == uid for r in rs["metadata"].get("ownerReferences") or [])
            }
        want = labobjects.template_hash(wl["spec"]["template"])
        pods = [
            p
            for p in self._read("Pod")
            if p["metadata"].get("namespace") == namespace
            and any(r.get("uid") in owners for r in p["metadata"].get("ownerReferences") or [])
        ]
        if not pods:
            return False
        labels = [p["metadata"].get("labels") or {} for p in pods]
        current = all(
            lab.get("pod-template-hash", lab.get("controller-revision-hash")) == want
            for lab in labels
        )
        return current and all(labobjects.is_ready(p) for p in pods)


class KubectlBackend:
    """kubectl on PATH, with the CLI's --context/--kubeconfig."""

    def __init__(self, *, context: str | None, kubeconfig: str | None, kubectl: str = "kubectl"):
        self.base = [kubectl]
        if kubeconfig:
            self.base += ["--kubeconfig", kubeconfig]
        if context:
            self.base += ["--context", context]
        self.where = f"cluster (context {context})" if context else "cluster"

    def _run(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        try:
            res = subprocess.run([*self.base, *args], input=stdin, capture_output=True,
                                 text=True, timeout=timeout)  # fmt: skip
        except FileNotFoundError:
            raise BackendError(f"{self.base[0]} is not installed or not on PATH") from None
        except subprocess.TimeoutExpired:
            raise BackendError(f"kubectl {' '.join(args)}: no answer in {timeout:.0f} s") from None
        if res.returncode != 0:
            raise BackendError(f"kubectl {' '.join(args)}: {res.stderr.strip() or res.stdout}")
        return res.stdout

    def objects(self) -> list[dict[str, Any]]:
        out = self._run("get", "namespaces,deployments,daemonsets,statefulsets,services",
                        "-A", "-o", "json")  # fmt: skip
        items: list[dict[str, Any]] = json.loads(out).get("items", [])
        try:  # Ingresses need networking.k8s.io/v1; a cluster without it has none
            items += json.loads(self._run("get", "ingresses", "-A", "-o", "json")).get("items", [])
        except BackendError:
            pass
        try:  # only to recognise router mode by a node's address; RBAC may not allow it
            nodes = json.loads(self._run("get", "nodes", "-o", "json")).get("items", [])
            items += [n for n in nodes if n.get("kind", "Node") == "Node"]
        except BackendError:
            pass
        return items

    def apply(self, changes: Sequence[Change]) -> list[str]:
        said: list[str] = []
        for c in changes:
            if c.after is not None:
                said.append(self._run("apply", "-f", "-", stdin=yaml.safe_dump(c.after)).strip())
            else:
                args = ["delete", c.kind.lower(), c.name, "--ignore-not-found"]
                if c.namespace:
                    args += ["-n", c.namespace]
                said.append(self._run(*args).strip())
        return said

    def rolled_out(self, kind: str, namespace: str, name: str) -> bool:
        try:
            self._run("rollout", "status", f"{kind.lower()}/{name}", "-n", namespace,
                      "--timeout", "1s", timeout=30)  # fmt: skip
        except BackendError as e:
            if "NotFound" in str(e) or "not found" in str(e):
                return True
            return False
        return True


def wait_rolled_out(
    backend: Backend, changes: Sequence[Change], *, timeout: float, poll: float = 1.0
) -> list[str]:
    """Waits until every workload the changes touched has rolled out; the ones that did not."""
    refs = sorted({(c.kind, c.namespace, c.name) for c in changes if c.kind in ROLLED_KINDS})
    deadline = time.monotonic() + timeout
    while True:
        left = [r for r in refs if not backend.rolled_out(*r)]
        if not left or time.monotonic() >= deadline:
            return [f"{k.lower()}/{n} -n {ns}" for k, ns, n in left]
        time.sleep(poll)
