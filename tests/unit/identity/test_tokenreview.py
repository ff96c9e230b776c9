"""TokenReview authentication and the CA Secret, through the real kubernetes client against a
small API server on loopback that answers the two endpoints involved."""

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client as k8s

from controlplane.identity import (
    AuthenticationFailed,
    AuthenticatorUnavailable,
    InvalidCaMaterial,
    TokenReviewAuthenticator,
    load_ca_from_secret,
)
from nodemesh.identity import ca_secret_data

AGENT = "system:serviceaccount:nodemesh:nodemesh-agent"
CP_TOKEN = "control-plane-own-token"


def _jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


BOUND_TO_NODE2 = _jwt({"kubernetes.io": {"namespace": "nodemesh", "node": {"name": "node2"}}})
BOUND_TO_POD = _jwt({"kubernetes.io": {"namespace": "nodemesh", "pod": {"name": "agent-x"}}})

# token -> TokenReview status the fake API server answers with.
REVIEWS: dict[str, dict[str, Any]] = {
    "agent-on-node1": {
        "authenticated": True,
        "audiences": ["nodemesh"],
        "user": {
            "username": AGENT,
            "extra": {"authentication.kubernetes.io/node-name": ["node1"]},
        },
    },
    BOUND_TO_NODE2: {"authenticated": True, "audiences": ["nodemesh"], "user": {"username": AGENT}},
    BOUND_TO_POD: {"authenticated": True, "user": {"username": AGENT}},
    "some-app-pod": {
        "authenticated": True,
        "audiences": ["nodemesh"],
        "user": {
            "username": "system:serviceaccount:emojivoto:web",
            "extra": {"authentication.kubernetes.io/node-name": ["node1"]},
        },
    },
    "other-audience": {"authenticated": True, "audiences": ["vault"], "user": {"username": AGENT}},
    "unbound": {"authenticated": True, "audiences": ["nodemesh"], "user": {"username": AGENT}},
}


class FakeApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reviews: list[tuple[str, dict[str, Any]]] = []
        self.secrets: dict[str, dict[str, Any]] = {}
        self.revoked: set[str] = set()  # tokens the API server no longer accepts


class _Handler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/apis/authentication.k8s.io/v1/tokenreviews":
            self._reply(404, {"kind": "Status", "code": 404})
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.reviews.append((self.headers.get("Authorization", ""), body))
        token = body["spec"]["token"]
        if token == "explode":
            self._reply(500, {"kind": "Status", "code": 500, "message": "etcd is sad"})
            return
        status = REVIEWS.get(token, {"authenticated": False, "error": "invalid bearer token"})
        if token in self.server.revoked:
            status = {"authenticated": False, "error": "token has been invalidated"}
        self._reply(
            201,
            {
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "spec": body["spec"],
                "status": status,
            },
        )

    def do_GET(self) -> None:  # noqa: N802
        prefix = "/api/v1/namespaces/nodemesh/secrets/"
        name = self.path.removeprefix(prefix)
        if self.path.startswith(prefix) and name in self.server.secrets:
            self._reply(200, self.server.secrets[name])
        else:
            self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-apiserver"
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def api_client(api_server: FakeApiServer) -> Iterator[k8s.ApiClient]:
    cfg = k8s.Configuration()
    cfg.host = f"http://127.0.0.1:{api_server.server_address[1]}"
    cfg.api_key = {"authorization": CP_TOKEN}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    with k8s.ApiClient(cfg) as client:
        yield client


async def test_node_comes_from_the_review_extra(api_server, api_client) -> None:
    auth = TokenReviewAuthenticator(api_client)
    agent = await auth.authenticate("agent-on-node1")
    assert (agent.node, agent.subject) == ("node1", AGENT)
    header, body = api_server.reviews[0]
    assert header == f"Bearer {CP_TOKEN}"
    assert body["spec"] == {"token": "agent-on-node1", "audiences": ["nodemesh"]}
    # A second call within the cache period costs no API request.
    assert (await auth.authenticate("agent-on-node1")).node == "node1"
    assert len(api_server.reviews) == 1


async def test_a_revoked_token_stops_working_within_a_few_seconds(api_server, api_client) -> None:
    now = [1000.0]
    auth = TokenReviewAuthenticator(api_client, clock=lambda: now[0])
    assert (await auth.authenticate("agent-on-node1")).node == "node1"
    api_server.revoked.add("agent-on-node1")  # e.g. its pod or service account was deleted
    now[0] += 5.0
    with pytest.raises(AuthenticationFailed, match="invalidated"):
        await auth.authenticate("agent-on-node1")


async def test_the_cache_never_outlives_the_tokens_expiry(api_server, api_client) -> None:
    expiring = _jwt({"exp": int(time.time()) + 1, "kubernetes.io": {"node": {"name": "node1"}}})
    REVIEWS[expiring] = {
        "authenticated": True,
        "audiences": ["nodemesh"],
        "user": {"username": AGENT},
    }
    try:
        now = [1000.0]
        auth = TokenReviewAuthenticator(api_client, clock=lambda: now[0])
        assert (await auth.authenticate(expiring)).node == "node1"
        now[0] += 1.5
        await auth.authenticate(expiring)
        assert len(api_server.reviews) == 2  # reviewed again: the cached answer had expired
    finally:
        del REVIEWS[expiring]


async def test_node_comes_from_pod_bound_claims(api_client) -> None:
    auth = TokenReviewAuthenticator(
        api_client, node_of_pod=lambda ns, pod: {("nodemesh", "agent-x"): "node3"}.get((ns, pod))
    )
    assert (await auth.authenticate(BOUND_TO_NODE2)).node == "node2"
    assert (await auth.authenticate(BOUND_TO_POD)).node == "node3"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("forged-or-expired", "invalid bearer token"),
        ("some-app-pod", "system:serviceaccount:emojivoto:web"),
        ("other-audience", "audience"),
        ("unbound", "not bound to a node"),
    ],
)
async def test_refuses(api_client, token, message) -> None:
    with pytest.raises(AuthenticationFailed, match=message):
        await TokenReviewAuthenticator(api_client).authenticate(token)


async def test_api_server_errors_are_unavailable_not_unauthenticated(api_client) -> None:
    with pytest.raises(AuthenticatorUnavailable, match="500"):
        await TokenReviewAuthenticator(api_client).authenticate("explode")


def test_ca_from_secret(api_server, api_client, anchor, issuer, foreign_anchor) -> None:
    files = ca_secret_data(anchor.certificate, issuer)
    data = {k: base64.b64encode(v).decode() for k, v in files.items()}
    api_server.secrets["nodemesh-identity"] = {"kind": "Secret", "data": data}
    bundle = load_ca_from_secret(api_client, namespace="nodemesh", name="nodemesh-identity")
    assert bundle.anchors == [anchor.certificate]
    assert bundle.issuer.certificate == issuer.certificate

    wrong = dict(data, **{"ca.crt": base64.b64encode(foreign_anchor.certificate_pem()).decode()})
    api_server.secrets["mixed-up"] = {"kind": "Secret", "data": wrong}
    with pytest.raises(InvalidCaMaterial, match="nodemesh/mixed-up"):
        load_ca_from_secret(api_client, namespace="nodemesh", name="mixed-up")
