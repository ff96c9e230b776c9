"""The HAProxy mTLS pair the mesh is compared with: certificates, both configs, the capture rules.

The `haproxy-http` path is the same pair with haproxy-A in HTTP mode (`http_client_config`): it
balances each request across the server pods (each with its own haproxy-B), with a server
timeout and retries on 503 standing for the HTTPRoute's timeout and retry rule.

haproxy-A runs in the client pod and receives the app's outbound TCP through iptables REDIRECT
(one local port per app port, since a plain TCP frontend cannot recover the original port),
opens mTLS to haproxy-B in the server pod, which hands the plaintext to the app on 127.0.0.1.
haproxy drops to the `haproxy` user after start, and that user's own connections are exempt
from the capture (`-m owner --uid-owner`), as the agent's are by its mark.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HAPROXY_USER = "haproxy"
SERVER_NAME = "bench-server"
# app port -> (haproxy-A's local port, haproxy-B's mTLS port)
PORTS = {80: (15080, 7080), 50051: (15051, 7051), 5201: (15201, 7201)}
# app port the Service exposes -> the port the app listens on in the server pod
APP_TARGETS = {80: 8080, 50051: 50051, 5201: 5201}
CAPTURE_CHAIN = "BENCH_OUTPUT"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_certs(folder: Path) -> dict[str, Path]:
    """A throwaway CA and one leaf each for haproxy-A (client) and haproxy-B (server), as the
    PEM bundles haproxy reads (`crt`: certificate then key; `ca-file`)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("bench-ca"))
        .issuer_name(_name("bench-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.crt"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"{SERVER_NAME}-{role}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        paths[role] = folder / f"{role}.pem"
        paths[role].write_bytes(cert.public_bytes(serialization.Encoding.PEM) + _pem_key(key))
    for p in paths.values():
        p.chmod(0o644)  # read by haproxy before it drops to its user, but keep it simple
    return paths


_GLOBAL = f"""global
    user {HAPROXY_USER}
    group {HAPROXY_USER}
    # The lab's processes may open 20000 files; haproxy wants about 2 per connection.
    maxconn 4096
    log stderr format short local0 warning

defaults
    mode tcp
    timeout connect 5s
    timeout client 2m
    timeout server 2m
"""


def client_config(*, certs: dict[str, Path], server_host: str) -> str:
    """haproxy-A: one plaintext frontend per captured port, mTLS to haproxy-B."""
    parts = [_GLOBAL]
    tls_opts = f"ssl crt {certs['client']} ca-file {certs['ca']} verify required"
    for app_port, (local, tls) in PORTS.items():
        parts.append(
            f"""
frontend out_{app_port}
    bind 0.0.0.0:{local}
    default_backend mtls_{app_port}

backend mtls_{app_port}
    server b {server_host}:{tls} {tls_opts} verifyhost {SERVER_NAME}
"""
        )
    return "".join(parts)


def server_config(*, certs: dict[str, Path], app_ports: tuple[int, ...] = tuple(PORTS)) -> str:
    """haproxy-B: terminate mTLS (client certificate required), plaintext to the app."""
    parts = [_GLOBAL]
    for app_port in app_ports:
        tls = PORTS[app_port][1]
        parts.append(
            f"""
frontend in_{app_port}
    bind 0.0.0.0:{tls} ssl crt {certs["server"]} ca-file {certs["ca"]} verify required
    default_backend app_{app_port}

backend app_{app_port}
    server app 127.0.0.1:{APP_TARGETS[app_port]}
"""
        )
    return "".join(parts)


def http_client_config(
    *, certs: dict[str, Path], servers: list[str], timeout_s: float, retries: int,
    retry_codes: tuple[int, ...],
) -> str:  # fmt: skip
    """haproxy-A in HTTP mode for the app's port 80: every request to the next server pod in
    turn (`balance roundrobin`, per request on kept-alive connections, pooled mTLS connections
    to each haproxy-B), `timeout server` for the route's request timeout, `retries` on
    `retry_codes` (and failed connections) to another server, as the route's retry rule.
    HAProxy has no retry budget: its retries are bounded by `retries` per request only."""
    local, tls = PORTS[80]
    tls_opts = f"ssl crt {certs['client']} ca-file {certs['ca']} verify required"
    codes = " ".join(str(c) for c in retry_codes)
    lines = "".join(
        f"    server s{i} {addr}:{tls} {tls_opts} verifyhost {SERVER_NAME}\n"
        for i, addr in enumerate(servers)
    )
    return f"""global
    user {HAPROXY_USER}
    group {HAPROXY_USER}
    maxconn 4096
    log stderr format short local0 warning

defaults
    mode http
    timeout connect 5s
    timeout client 2m
    timeout server {timeout_s:g}s
    timeout http-keep-alive 2m

frontend out_80
    bind 0.0.0.0:{local}
    default_backend l7_80

backend l7_80
    balance roundrobin
    http-reuse always
    retries {retries}
    retry-on conn-failure empty-response {codes}
    option redispatch 1
{lines}"""


def capture_script(ports: dict[int, tuple[int, int]] | None = None) -> str:
    """Shell for the client pod's init container: outbound TCP to the app ports (`ports`, by
    default all of PORTS) goes to haproxy-A, except haproxy's own connections and loopback.
    Idempotent, as an init container may run again."""
    ports = PORTS if ports is None else ports
    ipt = "iptables-legacy -w -t nat"
    lines = [
        "set -e",
        f"{ipt} -N {CAPTURE_CHAIN} 2>/dev/null || {ipt} -F {CAPTURE_CHAIN}",
        f"{ipt} -A {CAPTURE_CHAIN} -m owner --uid-owner {HAPROXY_USER} -j RETURN",
        f"{ipt} -A {CAPTURE_CHAIN} -o lo -j RETURN",
    ]
    for app_port, (local, _tls) in ports.items():
        lines.append(
            f"{ipt} -A {CAPTURE_CHAIN} -p tcp --dport {app_port} -j REDIRECT --to-ports {local}"
        )
    lines.append(
        f"{ipt} -C OUTPUT -p tcp -j {CAPTURE_CHAIN} 2>/dev/null || "
        f"{ipt} -A OUTPUT -p tcp -j {CAPTURE_CHAIN}"
    )
    return "\n".join(lines) + "\n"
