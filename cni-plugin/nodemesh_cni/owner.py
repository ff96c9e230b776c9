"""Is install-cni's DaemonSet going away? At SIGTERM this tells an uninstall from a restart.

A container restart, a rollout and a node shutdown all stop install-cni while its DaemonSet
stays: nodemesh-cni must then stay in the conflist, or pods would start unmeshed. When the
DaemonSet (or its namespace) is deleted, nodemesh leaves the node and install-cni must restore
it. Kubernetes sends the same SIGTERM in both cases, so install-cni asks the API server:

- the DaemonSet or its namespace is gone (404) or has a deletionTimestamp: leaving;
- 401/403 although access worked at start-up: the ServiceAccount or its RBAC, deleted before the
  namespace by `nodemesh uninstall | kubectl delete -f -`, is gone: leaving;
- both there, not being deleted: staying; anything else (API unreachable, 5xx): cannot tell,
  staying (a node left with the plugin is repaired by hand; pods never start unmeshed).

The lab has no API server: there the same questions are asked of its object files
(<objects>/DaemonSet/<ns>/<name>.yaml, the control plane's `local` source). Stdlib only.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
from pathlib import Path
from urllib.parse import urlsplit

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class Verdict:
    """leaving: nodemesh is being removed from the node; reason: why we think so (for the log)."""

    __slots__ = ("leaving", "known", "reason")

    def __init__(self, *, leaving: bool, known: bool, reason: str) -> None:
        self.leaving = leaving
        self.known = known  # False: could not tell (treated as staying)
        self.reason = reason

    def __repr__(self) -> str:
        return f"Verdict(leaving={self.leaving}, known={self.known}, reason={self.reason!r})"


def _leaving(reason: str) -> Verdict:
    return Verdict(leaving=True, known=True, reason=reason)


def _staying(reason: str, *, known: bool = True) -> Verdict:
    return Verdict(leaving=False, known=known, reason=reason)


class KubernetesOwner:
    """Asks the API server about the DaemonSet `namespace/name` (in-cluster credentials)."""

    def __init__(
        self,
        namespace: str,
        name: str,
        *,
        server: str,
        token_file: Path | None = SA_DIR / "token",
        ca_file: Path | None = SA_DIR / "ca.crt",
        timeout: float = 3.0,
    ) -> None:
        self.namespace, self.name = namespace, name
        self.server = server
        self.token_file, self.ca_file = token_file, ca_file
        self.timeout = timeout
        self.access_checked = False

    @classmethod
    def in_cluster(cls, namespace: str, name: str) -> KubernetesOwner:
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise OwnerError("KUBERNETES_SERVICE_HOST is not set: not running in a pod?")
        host = f"[{host}]" if ":" in host else host
        return cls(namespace, name, server=f"https://{host}:{port}")

    def _get(self, path: str) -> tuple[int, dict[str, object]]:
        url = urlsplit(self.server)
        if url.scheme == "https":
            context = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                url.hostname or "", url.port or 443, timeout=self.timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection(
                url.hostname or "", url.port or 80, timeout=self.timeout
            )
        headers = {"Accept": "application/json"}
        if self.token_file is not None:
            headers["Authorization"] = f"Bearer {self.token_file.read_text().strip()}"
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {}
        return resp.status, doc if isinstance(doc, dict) else {}

    def _ask(self) -> Verdict:
        ds = f"daemonset {self.namespace}/{self.name}"
        checks = (
            (f"/apis/apps/v1/namespaces/{self.namespace}/daemonsets/{self.name}", ds),
            (f"/api/v1/namespaces/{self.namespace}", f"namespace {self.namespace}"),
        )
        for path, what in checks:
            try:
                status, doc = self._get(path)
            except (OSError, http.client.HTTPException) as exc:
                return _staying(f"API server not reachable ({exc})", known=False)
            if status == 404:
                return _leaving(f"{what} is gone")
            if status in (401, 403):
                if self.access_checked:
                    return _leaving(f"nodemesh's access to {what} was removed (HTTP {status})")
                return _staying(f"HTTP {status} reading {what}: check nodemesh's RBAC", known=False)
            if status != 200:
                return _staying(f"HTTP {status} reading {what}", known=False)
            meta = doc.get("metadata")
            if isinstance(meta, dict) and meta.get("deletionTimestamp"):
                return _leaving(f"{what} is being deleted")
        return _staying(f"{ds} is in place")

    def check_access(self) -> Verdict:
        """At start-up: can we ask at all? Remembered, so a later 401/403 means removal."""
        verdict = self._ask()
        self.access_checked = verdict.known and not verdict.leaving
        return verdict

    def verdict(self) -> Verdict:
        if not self.access_checked:
            return _staying("could not ask the API server at start-up", known=False)
        return self._ask()


class LocalOwner:
    """The lab: the same questions asked of a directory of object files."""

    def __init__(self, namespace: str, name: str, *, objects_dir: Path) -> None:
        self.namespace, self.name = namespace, name
        self.ds_file = Path(objects_dir) / "DaemonSet" / namespace / f"{name}.yaml"
        self.ns_file = Path(objects_dir) / "Namespace" / f"{namespace}.yaml"
        self.access_checked = False

    def check_access(self) -> Verdict:
        verdict = self._look()
        self.access_checked = not verdict.leaving
        if verdict.leaving:
            return _staying(f"{verdict.reason} at start-up: wrong --daemonset?", known=False)
        return verdict

    def verdict(self) -> Verdict:
        if not self.access_checked:
            return _staying("the daemonset was not found at start-up", known=False)
        return self._look()

    def _look(self) -> Verdict:
        if not self.ds_file.exists():
            return _leaving(f"daemonset {self.namespace}/{self.name} is gone ({self.ds_file})")
        if not self.ns_file.exists():
            return _leaving(f"namespace {self.namespace} is gone ({self.ns_file})")
        return _staying(f"daemonset {self.namespace}/{self.name} is in place")


class OwnerError(Exception):
    """The owner check cannot be set up (bad --daemonset, no in-cluster environment)."""


def parse_daemonset(text: str) -> tuple[str, str]:
    namespace, _, name = text.partition("/")
    if not namespace or not name or "/" in name:
        raise OwnerError(f"--daemonset {text!r}: expected NAMESPACE/NAME")
    return namespace, name
