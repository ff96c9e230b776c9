"""The lab's stand-in for the Kubernetes API server, for what in-cluster clients of the lab ask.

Pods get `KUBERNETES_SERVICE_HOST`/`_PORT` as a kubelet gives them and, through projected
service-account token volumes, a token this server issued (with `kube-root-ca.crt` to trust it).
It answers GETs of single objects from the lab's store over HTTPS on the underlay (reachable from
every node and pod), with a cluster's authentication and RBAC: a token is valid while its
ServiceAccount exists; a GET is allowed when a ClusterRoleBinding (or RoleBinding) binds that
ServiceAccount to a role whose rules allow it. So install-cni's question at SIGTERM ("is my
DaemonSet or my namespace gone?", nodemesh_cni.owner) gets a cluster's answers, 401/403 after
`nodemesh uninstall` deleted its RBAC included. Lists, watches and writes are not served.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodemesh.lab.manifests import ObjectRef
from nodemesh.lab.store import Store

log = logging.getLogger(__name__)

PORT = 6443
# (api group, resource) -> kind, for the paths this server answers.
RESOURCES = {
    ("", "namespaces"): "Namespace",
    ("", "pods"): "Pod",
    ("", "services"): "Service",
    ("", "configmaps"): "ConfigMap",
    ("", "serviceaccounts"): "ServiceAccount",
    ("apps", "daemonsets"): "DaemonSet",
    ("apps", "deployments"): "Deployment",
}


@dataclass(frozen=True)
class Request:
    group: str
    resource: str
    namespace: str
    name: str


def parse_path(path: str) -> Request | None:
    """/api/v1/[namespaces/NS/]RES/NAME or /apis/GROUP/VERSION/[namespaces/NS/]RES/NAME."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if len(rest) == 2:
        return Request(group, rest[0], "", rest[1])
    if len(rest) == 4 and rest[0] == "namespaces":
        return Request(group, rest[2], rest[1], rest[3])
    return None


def allows(rule: dict[str, Any], req: Request, verb: str) -> bool:
    def has(key: str, value: str) -> bool:
        items = rule.get(key) or []
        return "*" in items or value in items

    names = rule.get("resourceNames") or []
    return (
        has("apiGroups", req.group)
        and has("resources", req.resource)
        and has("verbs", verb)
        and (not names or req.name in names)
    )


def authorized(store: Store, namespace: str, account: str, req: Request, verb: str) -> bool:
    """RBAC as a cluster evaluates it, for one ServiceAccount."""
    subject = {"kind": "ServiceAccount", "namespace": namespace, "name": account}

    def bound(binding: dict[str, Any]) -> bool:
        return any(
            {k: s.get(k, namespace if k == "namespace" else None) for k in subject} == subject
            for s in binding.get("subjects") or []
        )

    bindings = [("ClusterRoleBinding", b) for b in store.of_kind("ClusterRoleBinding")] + [
        ("RoleBinding", b) for b in store.of_kind("RoleBinding")
    ]
    for kind, binding in bindings:
        if not bound(binding):
            continue
        ref = binding.get("roleRef") or {}
        where = binding["metadata"].get("namespace", "")
        if kind == "RoleBinding" and req.namespace != where:
            continue
        role = (
            store.get(ObjectRef("ClusterRole", "", ref.get("name", "")))
            if ref.get("kind") == "ClusterRole"
            else store.get(ObjectRef("Role", where, ref.get("name", "")))
        )
        if role and any(allows(r, req, verb) for r in role.get("rules") or []):
            return True
    return False


def _serving_certificate(directory: Path, ip: str) -> tuple[Path, Path, bytes]:
    """A CA (what pods get as kube-root-ca.crt) and the server's certificate for `ip`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nodemesh lab apiserver CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.IPAddress(ipaddress.ip_address(ip)),
        x509.DNSName("kubernetes.default.svc"),
        x509.DNSName("kubernetes.default.svc.cluster.local"),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_file, key_file = directory / "apiserver.crt", directory / "apiserver.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file, ca.public_bytes(serialization.Encoding.PEM)


class ApiServer:
    def __init__(self, store: Store, *, directory: Path, ip: str) -> None:
        self.store, self.directory, self.ip = store, directory, ip
        self.ca_pem = b""
        self._tokens: dict[str, tuple[str, str]] = {}  # token -> (namespace, serviceaccount)
        self._server: asyncio.AbstractServer | None = None

    def issue_token(self, namespace: str, account: str) -> str:
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (namespace, account)
        return token

    async def start(self, make_socket: Callable[[], Any]) -> None:
        cert, key, self.ca_pem = _serving_certificate(self.directory, self.ip)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        sock = make_socket()
        sock.setsockopt(1, 2, 1)  # SO_REUSEADDR
        sock.bind((self.ip, PORT))
        sock.listen(64)
        sock.setblocking(False)
        self._server = await asyncio.start_server(self._handle, sock=sock, ssl=context)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await asyncio.wait_for(reader.readline(), 30)
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                status, body = self.answer(method, path, headers.get("authorization", ""))
                data = json.dumps(body).encode()
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                    .encode() + data
                )  # fmt: skip
                await writer.drain()
        except (OSError, ValueError, TimeoutError, ssl.SSLError):
            pass
        finally:
            writer.close()

    def answer(self, method: str, path: str, authorization: str) -> tuple[int, dict[str, Any]]:
        def status(code: int, reason: str, message: str) -> tuple[int, dict[str, Any]]:
            return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "reason": reason, "message": message, "code": code}  # fmt: skip

        token = authorization.removeprefix("Bearer ").strip()
        who = self._tokens.get(token) if authorization.startswith("Bearer ") else None
        if who is None or self.store.get(ObjectRef("ServiceAccount", *who)) is None:
            return status(401, "Unauthorized", "Unauthorized")
        req = parse_path(path)
        if method != "GET" or req is None or (req.group, req.resource) not in RESOURCES:
            return status(405, "MethodNotAllowed", f"the lab serves GET of one object, not {path}")
        user = f"system:serviceaccount:{who[0]}:{who[1]}"
        if not authorized(self.store, who[0], who[1], req, "get"):
            return status(403, "Forbidden", f"{user} cannot get {req.resource} {req.name}")
        obj = self.store.get(ObjectRef(RESOURCES[(req.group, req.resource)], req.namespace,
                                       req.name))  # fmt: skip
        if obj is None:
            return status(404, "NotFound", f'{req.resource} "{req.name}" not found')
        return 200, obj
