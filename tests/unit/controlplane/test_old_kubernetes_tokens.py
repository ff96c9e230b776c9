"""Agents on Kubernetes older than 1.30: their service-account token names no node (no
`authentication.kubernetes.io/node-name` extra, no node claim), only the pod. The control plane
must still authenticate the agent as the node its pod runs on (docs/install.md's minimum, 1.25)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client as k8s

from controlplane.identity import AuthenticationFailed, TokenReviewAuthenticator

AGENT = "system:serviceaccount:nodemesh:nodemesh-agent"


def _jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def _pod_token(pod: str, *, node: str | None = None) -> str:
    bound: dict[str, Any] = {
        "namespace": "nodemesh",
        "pod": {"name": pod, "uid": "0d5f"},
        "serviceaccount": {"name": "nodemesh-agent", "uid": "9a1c"},
    }
    if node:
        bound["node"] = {"name": node, "uid": "77e2"}
    return _jwt({"aud": ["nodemesh"], "sub": AGENT, "kubernetes.io": bound})


# What a 1.26 API server answers for a projected token: pod extras, no node name.
V126 = _pod_token("nodemesh-agent-x7k2p")
# What 1.30+ answers: the node in the extras (and in the token).
V130 = _pod_token("nodemesh-agent-q9z4m", node="node2")
REVIEWS = {
    V126: {
        "authenticated": True,
        "audiences": ["nodemesh"],
        "user": {
            "username": AGENT,
            "extra": {
                "authentication.kubernetes.io/pod-name": ["nodemesh-agent-x7k2p"],
                "authentication.kubernetes.io/pod-uid": ["0d5f"],
            },
        },
    },
    V130: {
        "authenticated": True,
        "audiences": ["nodemesh"],
        "user": {
            "username": AGENT,
            "extra": {
                "authentication.kubernetes.io/pod-name": ["nodemesh-agent-q9z4m"],
                "authentication.kubernetes.io/node-name": ["node2"],
            },
        },
    },
}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = REVIEWS.get(body["spec"]["token"], {"authenticated": False, "error": "invalid"})
        data = json.dumps(dict(body, status=status)).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def api() -> Iterator[k8s.ApiClient]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cfg = k8s.Configuration()
    cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with k8s.ApiClient(cfg) as api_client:
            yield api_client
    finally:
        server.shutdown()
        server.server_close()


async def test_a_126_token_is_the_node_its_pod_runs_on(api) -> None:
    pods = {("nodemesh", "nodemesh-agent-x7k2p"): "node1"}
    auth = TokenReviewAuthenticator(api, node_of_pod=lambda ns, pod: pods.get((ns, pod)))
    assert (await auth.authenticate(V126)).node == "node1"
    assert (await auth.authenticate(V130)).node == "node2"


async def test_a_126_token_of_a_pod_the_control_plane_does_not_know_is_refused(api) -> None:
    auth = TokenReviewAuthenticator(api, node_of_pod=lambda ns, pod: None)
    with pytest.raises(AuthenticationFailed, match="not bound to a node"):
        await auth.authenticate(V126)
