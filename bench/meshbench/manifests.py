"""The lab manifests of the benchmark: one namespace per path, and the 100 idle pods.

Each path namespace holds a `server` Deployment pinned to the server node (HTTP, gRPC and
iperf3 servers as containers of one pod) behind the Service `bench-server`, and a `client`
Deployment pinned to the client node whose container only sleeps: the harness runs the load
generators inside the client pod's netns. The HAProxy namespace adds haproxy-A (and the init
container that installs its capture rules) to the client, haproxy-B to the server.

The two L7 paths serve HTTP only, from L7_REPLICAS server pods so that per-request balancing
has a choice: `nodemesh-l7` adds an HTTPRoute on the Service with a request timeout and a retry
rule (under the default retry budget); `haproxy-http` puts haproxy-A in HTTP mode in front of a
haproxy-B in each server pod, balancing per request with the same timeout and retries. Its
client pod is deployed after the server pods (`deferred`): haproxy-A's configuration lists
their addresses.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.meshbench import haproxy

L4_PATHS = ("direct", "nodemesh", "haproxy")
L7_PATHS = ("nodemesh-l7", "haproxy-http")
PATHS = (*L4_PATHS, *L7_PATHS)
NAMESPACES = {"direct": "bench-direct", "nodemesh": "bench-mesh", "haproxy": "bench-haproxy",
              "nodemesh-l7": "bench-mesh-l7", "haproxy-http": "bench-haproxy-http"}  # fmt: skip
L7_REPLICAS = 2
# The route of the L7 paths: one rule, a request timeout, retries on 503 (HAProxy: the same).
ROUTE_NAME = "bench-route"
ROUTE_TIMEOUT_S = 5.0
ROUTE_RETRY_ATTEMPTS = 2  # retries after the first attempt (HTTPRoute `retry.attempts`)
ROUTE_RETRY_CODES = (503,)
IDLE_NAMESPACE = "bench-idle"
SERVICE = "bench-server"
HTTP_PORT, GRPC_PORT, IPERF_PORT = 80, 50051, 5201
# The nodemesh path's second HTTP server, on a port listed in `nodemesh.io/opaque-ports`: the
# same requests relayed as plain TCP (over mTLS), against HAProxy's TCP-mode pair.
OPAQUE_PORT = 8081
MESH_LABEL = {"nodemesh.io/mesh": "enabled"}


@dataclass(frozen=True)
class Binaries:
    """What the pods run: the compiled C server, the gRPC script and the Python for it."""

    http_server: Path
    grpc_script: Path
    python: str = sys.executable


def _namespace(
    name: str, *, meshed: bool, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if meshed:
        meta["labels"] = dict(MESH_LABEL)
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def _deployment(
    name: str, ns: str, *, node: str, containers: list[dict[str, Any]], replicas: int = 1,
    init: list[dict[str, Any]] | None = None, volumes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    labels = {"app": name}
    spec: dict[str, Any] = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "containers": containers,
    }
    if init:
        spec["initContainers"] = init
    if volumes:
        spec["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def _tcp_ready(port: int) -> dict[str, Any]:
    return {"tcpSocket": {"port": port}, "periodSeconds": 2}


def _service(
    ns: str, *, extra_ports: dict[str, int] | None = None, http_only: bool = False
) -> dict[str, Any]:
    ports = [{"name": "http", "port": HTTP_PORT, "targetPort": 8080}]
    if not http_only:
        ports += [
            {"name": "grpc", "port": GRPC_PORT, "targetPort": GRPC_PORT},
            {"name": "iperf", "port": IPERF_PORT, "targetPort": IPERF_PORT},
        ]
    for name, port in (extra_ports or {}).items():
        ports.append({"name": name, "port": port, "targetPort": port})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": ns},
        "spec": {"selector": {"app": "server"}, "ports": ports},
    }


def _route(ns: str) -> dict[str, Any]:
    """The HTTPRoute of `nodemesh-l7` (GAMMA: its parent is the Service)."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE_NAME, "namespace": ns},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": SERVICE, "port": HTTP_PORT}],
            "rules": [{
                "backendRefs": [{"name": SERVICE, "port": HTTP_PORT}],
                "timeouts": {"request": f"{ROUTE_TIMEOUT_S:g}s"},
                "retry": {"codes": list(ROUTE_RETRY_CODES), "attempts": ROUTE_RETRY_ATTEMPTS},
            }],
        },
    }  # fmt: skip


def path_objects(
    path: str, *, bins: Binaries, client_node: str, server_node: str, haproxy_dir: Path | None,
    files: Path | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One path's namespace, Service and pods. `files`, a host directory holding what the pods
    run (the built server, HAProxy's configuration), is mounted read-only at the same path in
    each of them: a lab container sees no other host file under /tmp."""
    ns = NAMESPACES[path]
    l7 = path in L7_PATHS
    servers: list[dict[str, Any]] = [
        {"name": "http", "command": [str(bins.http_server), "8080", "1024"],
         "readinessProbe": _tcp_ready(8080)},
    ]  # fmt: skip
    if not l7:
        servers += [
            {"name": "grpc", "command": [bins.python, str(bins.grpc_script), "serve", "--port",
                                         str(GRPC_PORT)],
             "readinessProbe": _tcp_ready(GRPC_PORT)},
            # No probe: iperf3 takes every connection for a test and logs an error per probe.
            {"name": "iperf", "command": ["iperf3", "--server", "--port", str(IPERF_PORT)]},
        ]  # fmt: skip
    client: list[dict[str, Any]] = [{"name": "idle", "command": ["sleep", "infinity"]}]
    init: list[dict[str, Any]] = []
    extra_ports: dict[str, int] = {}
    annotations: dict[str, str] = {}
    if path == "nodemesh":
        servers.append(
            {"name": "http-opaque", "command": [str(bins.http_server), str(OPAQUE_PORT), "1024"],
             "readinessProbe": _tcp_ready(OPAQUE_PORT)}
        )  # fmt: skip
        extra_ports["http-opaque"] = OPAQUE_PORT
        annotations["nodemesh.io/opaque-ports"] = str(OPAQUE_PORT)
    if path in ("haproxy", "haproxy-http"):
        assert haproxy_dir is not None
        suffix = "-http" if l7 else ""
        servers.append(
            {"name": "haproxy-b",
             "command": ["haproxy", "-db", "-f", str(haproxy_dir / f"server{suffix}.cfg")],
             "readinessProbe": _tcp_ready(haproxy.PORTS[HTTP_PORT][1])}
        )  # fmt: skip
        client = [
            {"name": "haproxy-a",
             "command": ["haproxy", "-db", "-f", str(haproxy_dir / f"client{suffix}.cfg")],
             "readinessProbe": _tcp_ready(haproxy.PORTS[HTTP_PORT][0])}
        ]  # fmt: skip
        # Installs iptables rules in the pod's netns, as istio-init and linkerd-init do.
        init = [
            {"name": "capture", "command": ["sh", str(haproxy_dir / f"capture{suffix}.sh")],
             "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}}}
        ]  # fmt: skip
        extra_ports = {
            f"mtls-{app}": tls for app, (_local, tls) in haproxy.PORTS.items()
            if not l7 or app == HTTP_PORT
        }  # fmt: skip
    volumes = None
    if files is not None:
        volumes = [{"name": "files", "hostPath": {"path": str(files), "type": "Directory"}}]
        for c in [*servers, *client, *init]:
            c["volumeMounts"] = [{"name": "files", "mountPath": str(files), "readOnly": True}]
    objects = [
        _namespace(ns, meshed=path in ("nodemesh", "nodemesh-l7"), annotations=annotations),
        _service(ns, extra_ports=extra_ports, http_only=l7),
        _deployment("server", ns, node=server_node, containers=servers, volumes=volumes,
                    replicas=L7_REPLICAS if l7 else 1),
        _deployment(
            "client", ns, node=client_node, containers=client, init=init, volumes=volumes
        ),
    ]  # fmt: skip
    if path == "nodemesh-l7":
        objects.append(_route(ns))
    return objects


def deferred(obj: dict[str, Any]) -> bool:
    """Objects applied once the others are ready: haproxy-http's client, whose configuration
    names the server pods' addresses."""
    meta = obj["metadata"]
    return (obj["kind"] == "Deployment" and meta["name"] == "client"
            and meta.get("namespace") == NAMESPACES["haproxy-http"])  # fmt: skip


def idle_objects(*, replicas: int, node: str) -> list[dict[str, Any]]:
    """`replicas` pods that only sleep, in a meshed namespace, all on `node` so one agent has
    them all enrolled."""
    return [
        _namespace(IDLE_NAMESPACE, meshed=True),
        _deployment("idle", IDLE_NAMESPACE, node=node, replicas=replicas,
                    containers=[{"name": "sleep", "command": ["sleep", "infinity"]}]),
    ]  # fmt: skip


def render(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)
