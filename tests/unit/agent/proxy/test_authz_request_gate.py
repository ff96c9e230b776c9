"""The relay's gate decides each request against the policies in force when it comes: a rule
withdrawn mid-connection denies the next request on that same (HTTP/1 keep-alive) connection,
and each denial is recorded with the policy's name."""

from __future__ import annotations

from nodeagent.observe.events import AuthzDenied, Peer
from nodeagent.proxy.authz_inbound import Inbound, RequestGate
from nodemesh import authz
from nodemesh.model import PodKey

POD = PodKey("shop", "api-0")
BOT = "spiffe://cluster.local/ns/shop/sa/bot"


def policy(paths: list[str]) -> authz.Policy:
    obj = {
        "metadata": {"namespace": "shop", "name": "api"},
        "spec": {
            "selector": {},
            "rules": [{"from": {"serviceAccounts": [{"name": "bot"}]}, "to": [{"paths": paths}]}],
        },
    }
    return authz.compile_policy(
        authz.PolicyKey("shop", "api"),
        authz.read_spec(obj),
        pods=[POD],
        trust_domain="cluster.local",
    )


def test_each_request_meets_the_policy_in_force() -> None:
    table = authz.PolicyTable()
    table.replace([policy(["/a", "/b"])])
    conn = Inbound(POD, 8080, BOT, "10.244.1.5", Peer("10.244.1.5"), Peer("10.244.1.9"), True, 1)
    recorded: list[AuthzDenied] = []
    gate = RequestGate(table, conn, recorded.append, h2=False)
    to_app, reply, close = gate.client(b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n")
    assert to_app.startswith(b"GET /a ") and not reply and not close
    assert gate.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        False,
    )
    table.replace([policy(["/a"])])  # /b withdrawn while the connection is open
    to_app, reply, close = gate.client(b"GET /b HTTP/1.1\r\nHost: api\r\n\r\n")
    assert to_app == b"" and reply.startswith(b"HTTP/1.1 403 ") and close
    (ev,) = recorded
    assert (ev.policy, ev.path, ev.status, ev.protocol) == ("shop/api", "/b", 403, "http1")
