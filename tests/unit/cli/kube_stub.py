"""A Kubernetes API server stub on loopback for the CLI's cluster mode: GETs answered from a
path -> object table, SelfSubjectAccessReviews allowed, through the real kubernetes client."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

Obj = dict[str, Any]


def version_info(version: str) -> Obj:
    major, minor, _ = version.split(".")
    return {
        "major": major,
        "minor": minor,
        "gitVersion": f"v{version}",
        "gitCommit": "0" * 40,
        "gitTreeState": "clean",
        "buildDate": "2023-01-01T00:00:00Z",
        "goVersion": "go1.20",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


class KubeStub:
    def __init__(self, *, version: str = "1.26.3") -> None:
        self.objects: dict[str, Obj] = {"/version": version_info(version)}
        handler = type("Handler", (_Handler,), {"stub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stub", "cluster": {"server": self.host}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "u"}}],
            "current-context": "stub",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    stub: KubeStub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        path = urlparse(self.path).path.rstrip("/")
        obj = self.stub.objects.get(path)
        if obj is None:
            self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
        else:
            self._reply(200, obj)

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if urlparse(self.path).path.endswith("/selfsubjectaccessreviews"):
            body["status"] = {"allowed": True}
            self._reply(201, body)
        else:
            self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})

    def _reply(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
