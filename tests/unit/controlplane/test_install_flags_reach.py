"""Every install flag reaches every component: the manifests rendered with a non-default
namespace, cluster domain and trust domain, and the control plane and an agent started with
exactly the arguments, environment and files those manifests give them, against an API server
that answers as a real one would for that install. The agent must connect (its /ready turns
200 once the control plane's destination stream, over TLS with host-name checking and a
TokenReview'd token, has synced).

The control plane gets one argument more than rendered: `--kubeconfig`, standing in for the
in-cluster configuration a pod finds at /var/run/secrets/kubernetes.io. The agent runs in a
mount namespace where the rendered volume paths hold what the cluster would put there (the
projected token, the trust-anchor ConfigMap, the hostPath run directory) and /etc/hosts names
the control plane's Service, as cluster DNS would."""

from __future__ import annotations

import shlex
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from fake_apiserver import FakeApiServer

from nodemesh.cli.main import cli

NAMESPACE, DOMAIN, TRUST = "mesh-system", "example.org", "corp.example"
CP_HOST = f"nodemesh-controlplane.{NAMESPACE}.svc.{DOMAIN}"
AGENT_TOKEN = "projected-agent-token-node1"
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.root


def _render() -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        cli,
        ["install", "-n", NAMESPACE, "--cluster-domain", DOMAIN, "--trust-domain", TRUST],
    )
    assert result.exit_code == 0, result.output
    return [d for d in yaml.safe_load_all(result.output) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[FakeApiServer, list[dict[str, Any]]]]:
    """The fake API server with the install's identity Secret and the agent's projected token
    (TokenReview names its node, as for a token bound to a pod)."""
    docs = _render()
    api = FakeApiServer().start()
    secret_path = f"/api/v1/namespaces/{NAMESPACE}/secrets/nodemesh-identity"
    api.fixed[secret_path] = _one(docs, "Secret", "nodemesh-identity")
    api.add_user(
        AGENT_TOKEN,
        f"system:serviceaccount:{NAMESPACE}:nodemesh-agent",
        extra={"authentication.kubernetes.io/node-name": ["node1"]},
    )
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}})
    try:
        yield api, docs
    finally:
        api.stop()


def _container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _env(container: dict[str, Any], node: str) -> dict[str, str]:
    env: dict[str, str] = {"PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[item["name"]] = node
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = container["name"]  # the pod's name: this test runs one of each
        else:  # pragma: no cover - a new kind of env the test must learn
            raise AssertionError(f"unhandled env {item}")
    return env


def _expand(args: list[str], env: dict[str, str]) -> list[str]:
    out = []
    for a in args:
        for k, v in env.items():
            a = a.replace(f"$({k})", v)
        out.append(a)
    return out


def _agent_command(docs: list[dict[str, Any]], tmp: Path) -> tuple[list[str], dict[str, str]]:
    """The agent container's command in a mount namespace holding its rendered volumes."""
    ds = _one(docs, "DaemonSet", "nodemesh-agent")
    agent = _container(ds, "agent")
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    config = _one(docs, "ConfigMap", volumes["trust-anchors"]["configMap"]["name"])
    token_path = volumes["token"]["projected"]["sources"][0]["serviceAccountToken"]["path"]
    (tmp / "anchors").mkdir()
    for key, text in config["data"].items():
        (tmp / "anchors" / key).write_text(text)
    (tmp / "token").mkdir()
    (tmp / "token" / token_path).write_text(AGENT_TOKEN)
    (tmp / "hosts").write_text(f"127.0.0.1 localhost\n127.0.0.1 {CP_HOST}\n")
    for d in ("etc-up", "etc-work"):
        (tmp / d).mkdir()
    q = shlex.quote
    env = _env(agent, "node1")
    setup = [
        # /run as an empty tmpfs: the hostPath run dir and netns dir start empty, as on a new node.
        "mount -t tmpfs tmpfs /run",
        f"mkdir -p {q(mounts['run'])} {q(mounts['netns'])} {q(mounts['token'])} {q(mounts['tmp'])}",
        f"mount --bind {q(str(tmp / 'token'))} {q(mounts['token'])}",
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={tmp}/etc-up,workdir={tmp}/etc-work"
        " /etc",
        f"mkdir -p {q(mounts['trust-anchors'])}",
        f"mount --bind {q(str(tmp / 'anchors'))} {q(mounts['trust-anchors'])}",
        f"cp {q(str(tmp / 'hosts'))} /etc/hosts",
        "exec " + " ".join(q(a) for a in agent["command"] + _expand(agent["args"], env)),
    ]
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-ec", "; ".join(setup)]
    return cmd, env


def _serving_certificate(port: int) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as s:
            der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _wait_ready(url: str, deadline: float, procs: list[subprocess.Popen[bytes]]) -> str:
    last = "no answer"
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"{p.args[0]} exited with {p.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as err:
            last = f"{err.code} {err.read().decode()}"
        except OSError as err:
            last = str(err)
        time.sleep(0.3)
    raise AssertionError(f"{url} never ready: {last}")


def test_the_agent_connects_to_a_control_plane_installed_with_other_names(
    cluster: tuple[FakeApiServer, list[dict[str, Any]]], tmp_path: Path
) -> None:
    api, docs = cluster
    for port in (8085, 8086, 9996, 4191):
        if not _port_free(port):
            pytest.skip(f"port {port} is taken on this machine (the rendered ports are fixed)")
    cp = _container(_one(docs, "Deployment", "nodemesh-controlplane"), "controlplane")
    cp_env = _env(cp, "node1")
    cp_cmd = (
        cp["command"]
        + _expand(cp["args"], cp_env)
        + [f"--kubeconfig={api.kubeconfig(tmp_path / 'kubeconfig', token='control-plane-token')}"]
    )
    agent_cmd, agent_env = _agent_command(docs, tmp_path)
    logs = {n: (tmp_path / f"{n}.log").open("wb") for n in ("cp", "agent")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            subprocess.Popen(cp_cmd, env=cp_env, stdout=logs["cp"], stderr=subprocess.STDOUT)
        )
        _wait_ready("http://127.0.0.1:9996/ready", time.monotonic() + 60, procs)
        cert = _serving_certificate(8086)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert CP_HOST in sans.get_values_for_type(x509.DNSName)
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://{TRUST}/ns/{NAMESPACE}/sa/nodemesh-controlplane"
        ]
        procs.append(
            subprocess.Popen(
                agent_cmd, env=agent_env, stdout=logs["agent"], stderr=subprocess.STDOUT
            )
        )
        body = _wait_ready("http://127.0.0.1:4191/ready", time.monotonic() + 60, procs)
        assert "ready" in body
        assert AGENT_TOKEN in [spec.get("token") for kind, spec in api.reviews]
    except AssertionError:
        for n, f in logs.items():
            f.flush()
            print(f"--- {n} log ---\n" + (tmp_path / f"{n}.log").read_text()[-4000:])
        raise
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        for f in logs.values():
            f.close()


def test_the_secret_is_read_from_the_install_namespace() -> None:
    from controlplane.main import parse_args

    args = parse_args(["--namespace", NAMESPACE])
    assert args.ca_secret == f"{NAMESPACE}/nodemesh-identity"
    with pytest.raises(SystemExit):
        parse_args(["--ca-secret", "no-slash"])
