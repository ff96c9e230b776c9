"""`nodemesh install --ingress`: nodemesh-ingress in a meshed namespace of its own, its
IngressClass, a LoadBalancer Service on 80/443, least-privilege RBAC (read-only, exactly the
kinds it watches), pinned by a golden file and valid for every supported Kubernetes."""

from __future__ import annotations

import kubernetes_validate
import yaml
from cli_server import assert_golden
from click.testing import CliRunner
from test_cli_install import K8S_VERSIONS, byo, identity_files, masked  # noqa: F401

from nodemesh.cli.main import cli


def render(*args: str) -> tuple[str, list[dict]]:
    res = CliRunner().invoke(cli, ["install", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.stdout, [d for d in yaml.safe_load_all(res.stdout) if d]


def ingress_objects(docs: list[dict]) -> list[dict]:
    return [d for d in docs if "ingress" in d["metadata"]["name"]
            or d["kind"] in ("IngressClass",)
            or d["metadata"].get("namespace", "").endswith("-ingress")]  # fmt: skip


def test_only_with_the_flag() -> None:
    _, docs = render()
    assert ingress_objects(docs) == []


def test_golden_and_valid(identity_files) -> None:  # noqa: F811
    text, docs = render("--ingress", "-n", "mesh", *byo(identity_files))
    mine = ingress_objects(docs)
    assert_golden("install-ingress.yaml", yaml.safe_dump_all(mine, sort_keys=False))
    for version in K8S_VERSIONS:
        for doc in mine:
            kubernetes_validate.validate(doc, version, strict=True)


def test_what_a_user_relies_on() -> None:
    _, docs = render("--ingress", "-n", "mesh", "--ingress-replicas", "2")
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    ns = by[("Namespace", "mesh-ingress")]
    assert ns["metadata"]["labels"]["nodemesh.io/mesh"] == "enabled"  # meshed: mTLS to backends
    assert by[("IngressClass", "nodemesh")]["spec"] == {"controller": "nodemesh.io/ingress"}
    svc = by[("Service", "nodemesh-ingress")]
    assert svc["metadata"]["namespace"] == "mesh-ingress"
    assert svc["spec"]["type"] == "LoadBalancer"
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        (80, "http"),
        (443, "https"),
    ]
    dep = by[("Deployment", "nodemesh-ingress")]
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["nodemesh-ingress"]
    assert "--source=kubernetes" in c["args"]
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert pod["metadata"]["annotations"]["nodemesh.io/skip-inbound-ports"] == (
        f"{named['http']},{named['https']}"
    )
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    role = by[("ClusterRole", "mesh-ingress")]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}  # fmt: skip
    want = {("networking.k8s.io", "ingresses"), ("networking.k8s.io", "ingressclasses"),
            ("", "services"), ("", "secrets"), ("discovery.k8s.io", "endpointslices"),
            ("gateway.networking.k8s.io", "gateways"), ("gateway.networking.k8s.io", "httproutes")}  # fmt: skip
    assert granted == {(g, r, v) for g, r in want for v in ("get", "list", "watch")}
    binding = by[("ClusterRoleBinding", "mesh-ingress")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "nodemesh-ingress", "namespace": "mesh-ingress"}
    ]


def test_bad_replicas_named() -> None:
    res = CliRunner().invoke(cli, ["install", "--ingress", "--ingress-replicas", "0"])
    assert res.exit_code != 0 and "--ingress-replicas 0 is not from 1 to 99" in res.output


def test_uninstall_removes_the_ingress_too() -> None:
    res = CliRunner().invoke(cli, ["uninstall", "-n", "mesh"], catch_exceptions=False)
    docs = [d for d in yaml.safe_load_all(res.stdout) if d]
    listed = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Namespace", "mesh-ingress"), ("IngressClass", "nodemesh"),
            ("ClusterRole", "mesh-ingress")} <= listed  # fmt: skip
    assert docs[-1]["metadata"]["name"] == "mesh"
