"""Router mode: an app that is not meshed sends through its node's agent as an HTTP proxy
(HTTP_PROXY=<node>:4144), as teams with a central router mesh or Linkerd 1's per-node proxy do.

Two-node lab: emojivoto meshed with web on node2 (no vote-bot: the test is web's only client),
an unmeshed client pod on node1 running curl and hey with node1's agent as their proxy. What a
user must see:

- `curl -x` (absolute-form), `curl -p -x` (CONNECT) and `hey -x` get web's answers, every one;
- node1's agent carries them to web over the mesh's mTLS tunnel: tcpdump on the underlay sees
  node1 reach web's pod on the tunnel port 4143, never the marker in the requests' paths;
- `edges` shows client -> web secured, with the client pod's own identity (its ServiceAccount)
  and web's, and `edges` and `stat` count exactly the requests the clients made;
- `tap` of the client shows its router requests (origin-form path, authority, identities);
- bad requests, unknown hosts, ports that are not the Service's and callers that are not pods of
  the node get 400, 502, 403 and 403 from the router, each naming why;
- a router-compatible Service (nodemesh.io/router: "true") whose router has no pods: a meshed
  app's `curl -H 'Host: echo.moving' http://router.infra/` and `curl -x router.infra:4140` reach
  echo over mTLS, counted under the app.

Run with NODEMESH_LEAKCHECK_ONLY=rtrmd on a shared machine. NODEMESH_ROUTER_REQUESTS sets hey's
request count (default 300).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodemesh.lab.paths import LabPaths
from tests.integration.labkit import NODEMESH, lab_up, nm
from tests.integration.test_lab_failclosed import Tcpdump
from tests.integration.test_lab_meshed_ingress import emojivoto_web_on_node2, pod_of, settles

pytestmark = [pytest.mark.root, pytest.mark.lab]

CLIENT_NS = "legacy"
MESHED_NS = "moving"
ROUTER = "172.18.0.1:4144"  # node1's agent (the lab's node1 address; a cluster: status.hostIP)
TD = "spiffe://cluster.local"
HEY_REQUESTS = int(os.environ.get("NODEMESH_ROUTER_REQUESTS", "300"))
CURLS = 10
URL = "http://web-svc.emojivoto/api/list"


def client_docs() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CLIENT_NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "legacy-app", "namespace": CLIENT_NS}},
        {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "client", "namespace": CLIENT_NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "client"}},
                     "template": {"metadata": {"labels": {"app": "client"}}, "spec": {
                         "serviceAccountName": "legacy-app",
                         "nodeSelector": {"kubernetes.io/hostname": "node1"},
                         "containers": [{"name": "client", "image": "debian/curl",
                                         "env": [{"name": "http_proxy",
                                                  "value": f"http://{ROUTER}"}],
                                         "command": ["sleep", "100000"]}]}}},
        },
        # A meshed app that still sends through the router: carried from its own address.
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": MESHED_NS, "labels": {"nodemesh.io/mesh": "enabled"}}},
        {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "meshed-client", "namespace": MESHED_NS},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "meshed-client"}},
                     "template": {"metadata": {"labels": {"app": "meshed-client"}}, "spec": {
                         "nodeSelector": {"kubernetes.io/hostname": "node1"},
                         "containers": [{"name": "client", "image": "debian/curl",
                                         "command": ["sleep", "100000"]}]}}},
        },
        *router_service_docs(),
    ]  # fmt: skip


def router_service_docs() -> list[dict[str, Any]]:
    """A central router's Service left without its router pods (as `migrate`'s remove-router
    step leaves it), annotated router-compatible; a meshed app on node1 still calling it, and
    the Service it names in Host (echo, one port: 8000) on node2."""

    def deploy(
        name: str, node: str, image: str, command: list[str], **extra: Any
    ) -> dict[str, Any]:
        return {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": MESHED_NS},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}}, "spec": {
                             "nodeSelector": {"kubernetes.io/hostname": node},
                             "containers": [{"name": name, "image": image, "command": command,
                                             **extra}]}}}}  # fmt: skip

    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "infra"}},
        # The router's Deployment, scaled to no pods (the lab wants a Service to select one).
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "router", "namespace": "infra"},
         "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "router"}},
                  "template": {"metadata": {"labels": {"app": "router"}}, "spec": {
                      "containers": [{"name": "haproxy", "image": "haproxy",
                                      "command": ["sleep", "100000"]}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "router", "namespace": "infra",
                      "annotations": {"nodemesh.io/router": "true"}},
         "spec": {"selector": {"app": "router"},  # no such pods any more
                  "ports": [{"name": "http", "port": 80}, {"name": "proxy", "port": 4140}]}},
        deploy("echo", "node2", "python", ["python3", "-m", "http.server", "8000"],
               readinessProbe={"tcpSocket": {"port": 8000}, "periodSeconds": 1}),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": MESHED_NS},
         "spec": {"selector": {"app": "echo"}, "ports": [{"port": 8000}]}},
        deploy("old-app", "node1", "debian/curl", ["sleep", "100000"]),
        # The same pods behind a Service with a mesh route: /moved/... redirected to /new/...
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "echo-routed", "namespace": MESHED_NS},
         "spec": {"selector": {"app": "echo"}, "ports": [{"port": 8000}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "moved", "namespace": MESHED_NS},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo-routed",
                                  "port": 8000}],
                  "rules": [
                      {"matches": [{"path": {"type": "PathPrefix", "value": "/moved"}}],
                       "filters": [{"type": "RequestRedirect", "requestRedirect": {
                           "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"},
                           "statusCode": 302}}]},
                      {"backendRefs": [{"name": "echo-routed", "port": 8000}]}]}},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabPaths, Path]]:
    tmp = tmp_path_factory.mktemp("router")
    with lab_up("rtrmd") as paths:
        app = tmp / "apps.yml"
        app.write_text(yaml.safe_dump_all([*emojivoto_web_on_node2(), *client_docs()]))
        nm("lab", "apply", "--name", paths.name, "-f", str(app), "--wait", "--timeout", "180")
        yield paths, tmp


def in_client(paths: LabPaths, script: str, *args: str) -> str:
    return nm("lab", "exec", "--name", paths.name, "-n", CLIENT_NS, "deploy/client", "--",
              "sh", "-c", script, "sh", *args, timeout=300)  # fmt: skip


def edges(paths: LabPaths) -> dict[tuple[str, str], dict[str, Any]]:
    out = json.loads(nm("edges", "deploy", "-A", "--lab", paths.name, "-t", "10m", "-o", "json"))
    return {(e["src"]["name"], e["dst"]["name"]): e for e in out["edges"]}


def test_an_unmeshed_app_reaches_the_mesh_through_its_nodes_agent_over_mtls(
    lab: tuple[LabPaths, Path],
) -> None:
    paths, tmp = lab
    web_ip = pod_of(paths, "emojivoto", "web")["status"]["podIP"]
    client_ip = pod_of(paths, CLIENT_NS, "client")["status"]["podIP"]
    marker = "nmrouter" + uuid.uuid4().hex[:8]
    capture = Tcpdump(paths.underlay_netns, tmp / "underlay.pcap")
    try:
        # Absolute-form through the http_proxy the pod was configured with, then CONNECT (-p).
        script = ('for i in $(seq 1 "$2"); do '
                  'curl -sS -o /dev/null -w "%{http_code}\\n" --max-time 20 "$1?m=$i"; '
                  'curl -sS -o /dev/null -w "%{http_code}\\n" --max-time 20 -p -x "$3" "$1?m=$i"; '
                  "done")  # fmt: skip
        codes = in_client(paths, script, f"{URL}?{marker}", str(CURLS), f"http://{ROUTER}")
        assert codes.split() == ["200"] * (2 * CURLS), codes
        # hey with keep-alive connections through the proxy: every request of a connection
        # after the first is rewritten to origin form too.
        out = in_client(paths, 'hey -n "$1" -c 4 -t 20 -x "$2" "$3"',
                        str(HEY_REQUESTS), f"http://{ROUTER}", f"{URL}?{marker}=hey")  # fmt: skip
    finally:
        capture.stop()
    assert re.search(rf"\[200\]\s+{HEY_REQUESTS} responses", out), out
    assert "Error distribution" not in out, out
    assert capture.dropped == 0
    # Never plaintext across nodes: node1's agent tunnels to web's pod (4143), never to 8080.
    assert capture.count(marker) == 0
    assert capture.packets(f"src host 172.18.0.1 and dst host {web_ip} and dst port 4143") > 0
    assert capture.packets(f"dst host {web_ip} and dst port 8080") == 0
    assert capture.packets(f"host {client_ip}") == 0  # the client stayed on node1

    total = 2 * CURLS + HEY_REQUESTS

    def web_stat() -> dict[str, Any]:
        out = nm("stat", "deploy/web", "-n", "emojivoto", "--lab", paths.name, "-t", "10m",
                 "-o", "json")  # fmt: skip
        return json.loads(out)["rows"][0]  # type: ignore[no-any-return]

    # web's only client is this one (no vote-bot): what web served is what curl and hey sent.
    row = settles(web_stat, lambda row: row["requests"] >= total)
    assert (row["requests"], row["success_rate"]) == (total, 1.0), row
    found = settles(lambda: edges(paths),
                    lambda got: got.get(("client", "web"), {}).get("requests", 0) >= total)  # fmt: skip
    edge = found[("client", "web")]
    assert edge["requests"] == total, edge  # exactly what curl and hey counted
    assert edge["secured"], edge
    assert (edge["src"]["namespace"], edge["dst"]["namespace"]) == (CLIENT_NS, "emojivoto")
    assert edge["client_id"] == f"{TD}/ns/{CLIENT_NS}/sa/legacy-app", edge
    assert edge["server_id"] == f"{TD}/ns/emojivoto/sa/web", edge


def test_the_router_answers_what_it_cannot_carry_and_names_why(
    lab: tuple[LabPaths, Path],
) -> None:
    paths, _ = lab
    script = ('curl -sS --max-time 20 -w " %{http_code}\\n" -x "$1" http://no-such-svc.emojivoto/; '
              'curl -sS --max-time 20 -w " %{http_code}\\n" -x "$1" http://web-svc.emojivoto:8080/; '
              'curl -sS --max-time 20 -w " %{http_code}\\n" -x "$1" '
              "http://emoji-svc.emojivoto:4143/; "
              'curl -sS --max-time 20 -w " %{http_code}\\n" --noproxy "*" "http://$1/"')  # fmt: skip
    # Each answer is one line of text (ending in a newline), then curl's " <status>".
    lines = in_client(paths, script, ROUTER).strip().splitlines()
    got = list(zip(lines[::2], lines[1::2], strict=True))
    assert len(got) == 4, lines
    expected = [("502", "unknown host 'no-such-svc.emojivoto'"),
                ("403", "port 8080 is not a TCP port of Service emojivoto/web-svc"),
                ("403", "port 4143 is the mesh agent's own"),
                ("400", "not a proxy request")]  # fmt: skip
    for (text, status), (want_status, says) in zip(got, expected, strict=True):
        assert status.strip() == want_status and says in text, (text, status)
    # A caller that is not a pod of node1 (node2 itself, here) is refused: the router serves
    # its own node's pods, as whom it tunnels.
    res = subprocess.run(
        ["ip", "netns", "exec", paths.node_netns("node2"), "curl", "-sS", "--max-time", "20",
         "-w", " %{http_code}", "-x", f"http://{ROUTER}", URL],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.stdout.endswith("\n 403"), (res.stdout, res.stderr)
    assert "caller 172.18.0.2 is not a pod of node node1" in res.stdout, res.stdout
    # Every answer of the router itself is counted on node1's agent's /metrics, by status.
    metrics = subprocess.run(
        ["ip", "netns", "exec", paths.node_netns("node1"), "curl", "-sS", "--max-time", "20",
         "http://127.0.0.1:4191/metrics"], capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    answered = dict(re.findall(r'^nodemesh_agent_router_answers_total\{status="(\d+)"\} (\S+)$',
                               metrics, re.M))  # fmt: skip
    assert answered == {"400": "1.0", "403": "3.0", "502": "1.0"}, answered


def test_router_requests_are_tapped_like_captured_ones(
    lab: tuple[LabPaths, Path],
) -> None:
    paths, _ = lab
    marker = "nmtap" + uuid.uuid4().hex[:8]
    with subprocess.Popen([NODEMESH, "tap", "deploy/client", "-n", CLIENT_NS, "--lab", paths.name,
                           "--duration", "8", "-o", "json"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:  # fmt: skip
        try:
            time.sleep(2)  # the tap reaches node1's agent
            script = ('for i in 1 2 3; do curl -sS -o /dev/null --max-time 20 "$1$i"; '
                      'curl -sS -o /dev/null --max-time 20 -p -x "$2" "$1p$i"; done')  # fmt: skip
            in_client(paths, script, f"{URL}?{marker}=", f"http://{ROUTER}")
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    reqs = {e["request_id"]: e for e in events if "req" in e and marker in e["req"]["path"]}
    # Absolute-form and CONNECT alike: the origin-form path, the authority, the caller pod as
    # the source with its own identity, web as the destination, mTLS.
    assert sorted(e["req"]["path"].rsplit("=", 1)[1] for e in reqs.values()) == [
        "1", "2", "3", "p1", "p2", "p3"], [e["req"] for e in reqs.values()]  # fmt: skip
    for e in reqs.values():
        assert e["req"]["path"].startswith("/api/list?"), e
        assert e["req"]["authority"] == "web-svc.emojivoto", e
        assert (e["src"]["workload"], e["src"]["namespace"]) == ("client", CLIENT_NS), e
        assert e["src"]["identity"] == f"{TD}/ns/{CLIENT_NS}/sa/legacy-app", e
        assert (e["dst"]["workload"], e["dst"]["service"]) == ("web", "web-svc"), e
        assert e["tls"] is True and e["direction"] == "OUTBOUND", e
    statuses = [e["rsp"]["status"] for e in events if "rsp" in e and e["request_id"] in reqs]
    assert statuses == [200] * 6, statuses


def test_migrate_status_lists_the_router_users(lab: tuple[LabPaths, Path]) -> None:
    paths, _ = lab
    out = json.loads(nm("migrate", "status", "--lab", paths.name, "-o", "json"))
    uses = [(u["workload"], u["env"], u["router"]) for u in out["router_uses"]]
    assert uses == [("deployment/client -n legacy", "http_proxy", "nodemesh:4144")], out
    legacy = next(r for r in out["namespaces"] if r["namespace"] == CLIENT_NS)
    assert legacy["stage"] == "router", legacy


def test_a_meshed_pod_sending_through_the_router_is_carried_from_its_own_address(
    lab: tuple[LabPaths, Path],
) -> None:
    paths, tmp = lab
    web_ip = pod_of(paths, "emojivoto", "web")["status"]["podIP"]
    me = pod_of(paths, MESHED_NS, "meshed-client")
    marker = "nmmeshed" + uuid.uuid4().hex[:8]
    capture = Tcpdump(paths.underlay_netns, tmp / "meshed.pcap")
    try:
        codes = nm("lab", "exec", "--name", paths.name, "-n", MESHED_NS, "deploy/meshed-client",
                   "--", "sh", "-c", 'for i in 1 2 3 4 5; do curl -sS -o /dev/null -w '
                   '"%{http_code}\\n" --max-time 20 -x "$1" "$2$i"; done', "sh",
                   f"http://{ROUTER}", f"{URL}?{marker}=", timeout=300)  # fmt: skip
    finally:
        capture.stop()
    assert codes.split() == ["200"] * 5, codes
    assert capture.dropped == 0 and capture.count(marker) == 0
    src = me["status"]["podIP"]
    assert capture.packets(f"src host {src} and dst host {web_ip} and dst port 4143") > 0
    # Reports come each second: wait for all five (the edge may first show a partial count).
    found = settles(
        lambda: edges(paths),
        lambda got: got.get(("meshed-client", "web"), {}).get("requests", 0) >= 5,
    )
    edge = found[("meshed-client", "web")]
    assert edge["secured"] and edge["requests"] == 5, edge
    assert edge["client_id"] == f"{TD}/ns/{MESHED_NS}/sa/default", edge


def test_a_router_service_without_router_pods_routes_by_host_over_mtls(
    lab: tuple[LabPaths, Path],
) -> None:
    """Linkerd 1's linkerd-service pattern after the router is gone: the app keeps sending to
    router.infra, naming the real Service in Host (or through http_proxy=router.infra:4140);
    its node's agent routes each request by what it names, as the app, over mTLS."""
    paths, tmp = lab
    echo_ip = pod_of(paths, MESHED_NS, "echo")["status"]["podIP"]
    me = pod_of(paths, MESHED_NS, "old-app")["status"]["podIP"]
    marker = "nmrtrsvc" + uuid.uuid4().hex[:8]
    capture = Tcpdump(paths.underlay_netns, tmp / "router-service.pcap")
    try:
        script = ('for i in 1 2 3 4 5; do '
                  'curl -sS -o /dev/null -w "%{http_code}\\n" --max-time 20 '
                  '-H "Host: echo.moving" "http://router.infra/?$1=$i"; '
                  'curl -sS -o /dev/null -w "%{http_code}\\n" --max-time 20 '
                  '-x http://router.infra:4140 "http://echo.moving:8000/?$1=p$i"; done')  # fmt: skip
        codes = nm("lab", "exec", "--name", paths.name, "-n", MESHED_NS, "deploy/old-app", "--",
                   "sh", "-c", script, "sh", marker, timeout=300)  # fmt: skip
    finally:
        capture.stop()
    assert codes.split() == ["200"] * 10, codes
    assert capture.dropped == 0 and capture.count(marker) == 0  # never plaintext
    assert capture.packets(f"src host {me} and dst host {echo_ip} and dst port 4143") > 0
    assert capture.packets(f"dst host {echo_ip} and dst port 8000") == 0

    def from_old_app() -> dict[str, Any]:
        out = nm("stat", "deploy", "-n", MESHED_NS, "--from", "deploy/old-app", "--lab",
                 paths.name, "-t", "10m", "-o", "json")  # fmt: skip
        return {r["name"]: r for r in json.loads(out)["rows"]}

    # Counted under the caller: old-app -> echo, every request, all successful, over mTLS.
    rows = settles(from_old_app, lambda got: got.get("echo", {}).get("requests", 0) >= 10)
    assert (rows["echo"]["requests"], rows["echo"]["success_rate"]) == (10, 1.0), rows
    found = settles(
        lambda: edges(paths), lambda got: got.get(("old-app", "echo"), {}).get("requests", 0) >= 10
    )
    edge = found[("old-app", "echo")]
    assert edge["secured"] and edge["requests"] == 10, edge
    assert edge["client_id"] == f"{TD}/ns/{MESHED_NS}/sa/default", edge
    assert edge["server_id"] == f"{TD}/ns/{MESHED_NS}/sa/default", edge


def test_mesh_routes_apply_to_a_meshed_apps_requests_through_the_router(
    lab: tuple[LabPaths, Path],
) -> None:
    """An HTTPRoute on the destination Service applies to what a meshed app sends through a
    router Service (by Host or as a proxy) or through its node's router port, as it applies to
    its captured requests: here a RequestRedirect answered by the app's own agent."""
    paths, _ = lab
    fmt = '"%{http_code} %{redirect_url}\\n"'
    via_service = ("curl -sS -o /dev/null --max-time 20 -w " + fmt
                   + ' -H "Host: echo-routed.moving" http://router.infra/moved/a; '
                   "curl -sS -o /dev/null --max-time 20 -w " + fmt
                   + " -x http://router.infra:4140 http://echo-routed.moving:8000/moved/b; "
                   "curl -sS -o /dev/null --max-time 20 -w " + fmt
                   + ' -H "Host: echo-routed.moving" http://router.infra/')  # fmt: skip
    got = nm("lab", "exec", "--name", paths.name, "-n", MESHED_NS, "deploy/old-app", "--",
             "sh", "-c", via_service, timeout=300).split("\n")  # fmt: skip
    assert [line.strip() for line in got if line.strip()] == [
        "302 http://echo-routed.moving/new/a",
        "302 http://echo-routed.moving/new/b",
        "200",  # the route's other rule: to echo
    ], got
    via_port = nm("lab", "exec", "--name", paths.name, "-n", MESHED_NS, "deploy/meshed-client",
                  "--", "sh", "-c", "curl -sS -o /dev/null --max-time 20 -w " + fmt + ' -x "$1" '
                  "http://echo-routed.moving:8000/moved/c", "sh", f"http://{ROUTER}",
                  timeout=300)  # fmt: skip
    assert via_port.strip() == "302 http://echo-routed.moving/new/c", via_port
