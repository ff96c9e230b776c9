"""A small Kubernetes API server on loopback speaking the real list/watch wire protocol.

Lists are JSON with metadata.resourceVersion; `?watch=true` answers with a chunked stream of
JSON lines (ADDED/MODIFIED/DELETED/BOOKMARK/ERROR). Tests can compact the history (watches from
older versions then get an ERROR event with code 410), drop every open watch connection without
a proper end, inject raw lines, take the server away (connections refused) and bring it back on
the same port, or make it answer 503 to everything as an overloaded or restarting one does.
`/version` answers with `version` (a test can pretend to be an older Kubernetes).

It also answers TokenReview and SubjectAccessReview (POST) from tables the tests fill: `tokens`
(token -> user info, with `extra` such as a projected token's node name), `revoke(token)`, and
`grants` (user or group, verb, group, resource, namespace: "" = every namespace) checked the way
RBAC does; every review is recorded. SelfSubjectAccessReviews are allowed. Single objects the
CLI or the control plane GET (a DaemonSet, a Secret) are answered from `fixed` (path -> object);
`kubeconfig(path)` writes a kubeconfig that points the real client here."""

from __future__ import annotations

import copy
import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

Obj = dict[str, Any]

PATHS = {
    "/api/v1/namespaces": ("Namespace", "v1"),
    "/api/v1/nodes": ("Node", "v1"),
    "/api/v1/pods": ("Pod", "v1"),
    "/api/v1/services": ("Service", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": ("EndpointSlice", "discovery.k8s.io/v1"),
    "/apis/apps/v1/replicasets": ("ReplicaSet", "apps/v1"),
    "/apis/apps/v1/deployments": ("Deployment", "apps/v1"),
    "/apis/policy.nodemesh.io/v1alpha1/inboundpolicies": (
        "InboundPolicy",
        "policy.nodemesh.io/v1alpha1",
    ),
    "/apis/gateway.networking.k8s.io/v1/httproutes": ("HTTPRoute", "gateway.networking.k8s.io/v1"),
    "/apis/gateway.networking.k8s.io/v1/grpcroutes": ("GRPCRoute", "gateway.networking.k8s.io/v1"),
}
CRD_KINDS = {"InboundPolicy"}  # served only while `crds` is set (installed)


REVIEW_PATHS = {
    "/apis/authentication.k8s.io/v1/tokenreviews": "TokenReview",
    "/apis/authorization.k8s.io/v1/subjectaccessreviews": "SubjectAccessReview",
    "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews": "SelfSubjectAccessReview",
}


@dataclass(frozen=True)
class Grant:
    subject: str  # a user name or a group name
    verb: str
    group: str
    resource: str  # "deployments/tap", or "*"
    namespace: str = ""  # "" = every namespace (a ClusterRoleBinding)


def version_info(version: str) -> Obj:
    """What GET /version answers, for `version` like "1.26.3"."""
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


@dataclass
class Request:
    kind: str
    watch: bool
    params: dict[str, str]


@dataclass
class _State:
    rv: int = 1000
    compacted: int = 0
    objects: dict[str, dict[tuple[str, str], Obj]] = field(default_factory=dict)
    log: list[tuple[int, str, str]] = field(default_factory=list)  # (rv, kind, json line)
    drops: int = 0
    bookmarks: int = 0
    closing: bool = False
    refusing: bool = False


class FakeApiServer:
    def __init__(self) -> None:
        self.state = _State()
        self.cond = threading.Condition()
        self.requests: list[Request] = []
        self.open_watches = 0
        self.tokens: dict[str, Obj] = {}  # token -> TokenReview status.user
        self.revoked: set[str] = set()
        self.grants: list[Grant] = []
        self.reviews: list[tuple[str, Obj]] = []  # (kind, spec) of every review asked
        self.connections: set[socket.socket] = set()
        self.fixed: dict[str, Obj] = {}  # GET path -> the object answered as is
        self.version = version_info("1.30.0")
        self.crds = True  # nodemesh's CRDs installed
        self.absent: set[str] = set()  # kinds whose CRD is not installed (404)
        self.port = 0
        self._serving = False
        self._listen()

    def _listen(self) -> None:
        handler = type("Handler", (_Handler,), {"api": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-apiserver")

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeApiServer:
        self.thread.start()
        self._serving = True
        return self

    def kubeconfig(self, path: Path, *, token: str = "t") -> Path:
        """A kubeconfig at `path` that sends the real client here with `token`."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.host}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def stop(self) -> None:
        with self.cond:
            self.state.closing = True
            self.cond.notify_all()
        self._close()

    def _close(self) -> None:
        if self._serving:
            self.httpd.shutdown()
            self._serving = False
        self.httpd.server_close()
        self.thread.join(5)

    def go_away(self) -> None:
        """Close the listening socket and every connection: new ones are refused from now."""
        self.drop_watches()
        self._close()
        with self.cond:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone

    def come_back(self) -> None:
        """Listen again on the same port, with the same objects and history."""
        with self.cond:
            self.state.closing = False
        self._listen()
        self.start()

    def refuse(self, on: bool = True) -> None:
        """Answer 503 to every request (and cut the watches), or stop doing so."""
        with self.cond:
            self.state.refusing = on
            if on:
                self.state.drops += 1
            self.cond.notify_all()

    # -- what tests do to the "cluster" ------------------------------------------------

    def apply(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        kind = obj["kind"]
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        with self.cond:
            table = self.state.objects.setdefault(kind, {})
            event = "MODIFIED" if key in table else "ADDED"
            self.state.rv += 1
            meta["resourceVersion"] = str(self.state.rv)
            table[key] = obj
            self._log(kind, json.dumps({"type": event, "object": obj}))
        return obj

    def delete(self, kind: str, namespace: str, name: str) -> None:
        with self.cond:
            obj = self.state.objects[kind].pop((namespace, name))
            self.state.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.state.rv)
            self._log(kind, json.dumps({"type": "DELETED", "object": obj}))

    def inject_line(self, kind: str, line: str) -> None:
        """Send a raw line to the watchers of `kind` (for malformed events)."""
        with self.cond:
            self.state.rv += 1
            self._log(kind, line)

    def compact(self) -> None:
        """Forget the history: a watch from any older resourceVersion gets 410 Gone."""
        with self.cond:
            self.state.compacted = self.state.rv
            self.state.log.clear()

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream, as a crashing API server would."""
        with self.cond:
            self.state.drops += 1
            self.cond.notify_all()

    def bookmark(self) -> None:
        with self.cond:
            self.state.bookmarks += 1
            self.cond.notify_all()

    def add_user(
        self,
        token: str,
        username: str,
        groups: tuple[str, ...] = (),
        *,
        extra: dict[str, list[str]] | None = None,
    ) -> None:
        self.tokens[token] = {"username": username, "uid": f"uid-{username}",
                              "groups": [*groups, "system:authenticated"]}  # fmt: skip
        if extra:
            self.tokens[token]["extra"] = extra

    def revoke(self, token: str) -> None:
        self.revoked.add(token)

    def review(self, kind: str, spec: Obj) -> Obj:
        with self.cond:
            self.reviews.append((kind, copy.deepcopy(spec)))
        if kind == "TokenReview":
            token = spec.get("token", "")
            user = self.tokens.get(token)
            if user is None or token in self.revoked:
                return {"authenticated": False, "error": "invalid bearer token"}
            # The audiences asked for, as an API server answers for a token valid for them.
            audiences = {"audiences": spec["audiences"]} if spec.get("audiences") else {}
            return {"authenticated": True, "user": user, **audiences}
        if kind == "SelfSubjectAccessReview":
            return {"allowed": True, "reason": "the fake API server allows its caller anything"}
        attrs = spec.get("resourceAttributes") or {}
        subjects = {spec.get("user"), *(spec.get("groups") or [])}
        resource = attrs.get("resource", "")
        if attrs.get("subresource"):
            resource += "/" + attrs["subresource"]
        for g in self.grants:
            if (
                g.subject in subjects
                and g.verb == attrs.get("verb")
                and g.group == attrs.get("group", "")
                and g.resource in ("*", resource)
                and g.namespace in ("", attrs.get("namespace", ""))
            ):
                return {"allowed": True, "reason": f"granted to {g.subject}"}
        return {"allowed": False}

    def count(self, kind: str, *, watch: bool) -> int:
        return sum(1 for r in self.requests if r.kind == kind and r.watch == watch)

    def _log(self, kind: str, line: str) -> None:
        self.state.log.append((self.state.rv, kind, line))
        self.cond.notify_all()


class _Handler(BaseHTTPRequestHandler):
    api: FakeApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass

    def do_POST(self) -> None:  # noqa: N802 (stdlib name)
        kind = REVIEW_PATHS.get(urlparse(self.path).path)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if kind is None:
            self._json(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
            return
        spec = body.get("spec") or {}
        status = self.api.review(kind, spec)
        self._json(201, {"kind": kind, "apiVersion": body.get("apiVersion"), "spec": spec,
                         "status": status})  # fmt: skip

    def setup(self) -> None:
        super().setup()
        with self.api.cond:
            self.api.connections.add(self.connection)

    def finish(self) -> None:
        with self.api.cond:
            self.api.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass  # the connection was cut by go_away

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        url = urlparse(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if self.api.state.refusing:
            self._json(503, {"kind": "Status", "code": 503, "reason": "ServiceUnavailable"})
            return
        if url.path.rstrip("/") == "/version":
            self._json(200, self.api.version)
            return
        fixed = self.api.fixed.get(url.path.rstrip("/"))
        if fixed is not None:
            self._json(200, fixed)
            return
        kind_of = PATHS[url.path][0] if url.path in PATHS else ""
        if (
            not kind_of
            or (kind_of in CRD_KINDS and not self.api.crds)
            or kind_of in self.api.absent
        ):
            self._json(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
            return
        kind, api_version = PATHS[url.path]
        watch = params.get("watch") in ("true", "1")
        self.api.requests.append(Request(kind, watch, params))
        if watch:
            self._watch(kind, api_version, params)
        else:
            self._list(kind, api_version)

    def _list(self, kind: str, api_version: str) -> None:
        with self.api.cond:
            items = list(self.api.state.objects.get(kind, {}).values())
            rv = self.api.state.rv
        items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
        self._json(
            200,
            {
                "kind": f"{kind}List",
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    def _json(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, line: str) -> None:
        data = line.encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""

    def _watch(self, kind: str, api_version: str, params: dict[str, str]) -> None:
        api, state = self.api, self.api.state
        since = int(params.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(params.get("timeoutSeconds") or 3600)
        bookmarks_wanted = params.get("allowWatchBookmarks") == "true"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with api.cond:
            drops, bookmarks = state.drops, state.bookmarks
            if since and since < state.compacted:
                status = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": f"too old resource version: {since} ({state.compacted})",
                    "reason": "Expired",
                    "code": 410,
                }
                self._chunk(json.dumps({"type": "ERROR", "object": status}))
                self.wfile.write(b"0\r\n\r\n")
                return
            cursor = since or state.rv
            api.open_watches += 1
        try:
            while True:
                with api.cond:
                    if state.closing or state.drops != drops:
                        break
                    pending = [(rv, line) for rv, k, line in state.log if k == kind and rv > cursor]
                    if not pending:
                        if state.bookmarks != bookmarks:
                            bookmarks = state.bookmarks
                            if bookmarks_wanted:
                                mark = {
                                    "kind": kind,
                                    "apiVersion": api_version,
                                    "metadata": {"resourceVersion": str(state.rv)},
                                }
                                line = json.dumps({"type": "BOOKMARK", "object": mark})
                                pending = [(cursor, line)]
                        elif time.monotonic() >= deadline:
                            self.wfile.write(b"0\r\n\r\n")  # the server-side timeout: a clean end
                            return
                        elif self._client_gone():
                            return
                        else:
                            api.cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                            continue
                for rv, line in pending:
                    self._chunk(line)
                    cursor = max(cursor, rv)
            # Dropped: no terminating chunk, the socket is just shut.
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        finally:
            with api.cond:
                api.open_watches -= 1
