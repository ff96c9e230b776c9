"""manifests/examples/emojivoto.yml: valid, consistent, and runnable by the lab as written."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

MANIFEST = Path(__file__).resolve().parents[3] / "manifests" / "examples" / "emojivoto.yml"


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(by_key) == len(docs), "duplicate kind/name"
    return by_key


def _of_kind(objects: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    return {name: obj for (k, name), obj in objects.items() if k == kind}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_the_whole_app_is_there(objects) -> None:
    assert set(objects) == {
        ("Namespace", "emojivoto"),
        *(("ServiceAccount", n) for n in ("emoji", "voting", "web", "vote-bot")),
        *(("Deployment", n) for n in ("emoji", "voting", "web", "vote-bot")),
        *(("Service", n) for n in ("emoji-svc", "voting-svc", "web-svc")),
    }
    namespace = objects[("Namespace", "emojivoto")]
    assert namespace["metadata"]["labels"]["nodemesh.io/mesh"] == "enabled"
    for (kind, _), obj in objects.items():
        if kind != "Namespace":
            assert obj["metadata"]["namespace"] == "emojivoto"


def test_every_command_names_a_module_that_exists(objects) -> None:
    for name, deployment in _of_kind(objects, "Deployment").items():
        command = _container(deployment)["command"]
        assert command[:2] == ["python3", "-m"] and len(command) == 3, name
        assert importlib.util.find_spec(command[2]) is not None, command[2]
        assert _container(deployment)["image"] == "ghcr.io/nodemesh/emojivoto:0.1.0"


def test_deployments_are_wired_as_kubernetes_expects(objects) -> None:
    accounts = _of_kind(objects, "ServiceAccount")
    for name, deployment in _of_kind(objects, "Deployment").items():
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert labels == {"app": name, "version": "v1"}
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert spec["replicas"] == 1
        assert spec["template"]["spec"]["serviceAccountName"] in accounts
        container = _container(deployment)
        probe = container["readinessProbe"]
        probed = (probe.get("httpGet") or probe.get("tcpSocket"))["port"]
        assert probed in {p["containerPort"] for p in container["ports"]}, name
        assert probe["initialDelaySeconds"] >= 0 and probe["periodSeconds"] > 0


def test_services_reach_a_declared_container_port(objects) -> None:
    deployments = _of_kind(objects, "Deployment")
    expected = {"emoji-svc": 8080, "voting-svc": 8080, "web-svc": 80}
    for name, service in _of_kind(objects, "Service").items():
        spec = service["spec"]
        targets = [
            d
            for d in deployments.values()
            if spec["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, name
        (port,) = spec["ports"]
        assert port["port"] == expected[name]
        assert port["targetPort"] in {p["containerPort"] for p in _container(targets[0])["ports"]}


def test_env_points_each_client_at_its_service(objects) -> None:
    services = _of_kind(objects, "Service")
    deployments = _of_kind(objects, "Deployment")
    web = _env(_container(deployments["web"]))
    bot = _env(_container(deployments["vote-bot"]))
    for address in (web["EMOJISVC_HOST"], web["VOTINGSVC_HOST"], bot["WEB_HOST"]):
        host, port = address.rsplit(":", 1)
        service, namespace = host.split(".")
        assert namespace == "emojivoto"
        assert int(port) == services[service]["spec"]["ports"][0]["port"]
    assert float(bot["VOTE_RATE"]) > 0
    stats_ports = {p["containerPort"] for p in _container(deployments["vote-bot"])["ports"]}
    assert int(bot["STATS_PORT"]) in stats_ports
