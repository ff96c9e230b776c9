"""Manifest parsing and validation: every bad input names the file, the object and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodemesh.lab.manifests import ManifestError, check_references, parse

REPO = Path(__file__).resolve().parents[3]

DEPLOY = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        command: ["python3", "-m", "http.server"]
"""
NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
SVC = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8000}]
"""


def which_all(exe: str) -> str | None:
    return f"/usr/bin/{exe}" if exe != "no-such-binary" else None


def error_of(text: str, **kw: object) -> ManifestError:
    with pytest.raises(ManifestError) as e:
        ms = parse(text, source="app.yml")
        check_references(ms, existing=[], which=which_all)
    return e.value


def test_valid_file_parses_into_refs() -> None:
    ms = parse("---\n".join([NS, DEPLOY, SVC]), source="app.yml")
    assert [str(m.ref) for m in ms] == ["Namespace shop", "Deployment shop/web", "Service shop/web"]
    check_references(ms, existing=[], which=which_all)


def test_invalid_yaml_names_line_and_column() -> None:
    e = error_of("kind: Namespace\nmetadata: {name: [unclosed\n")
    assert str(e).startswith("app.yml: line ")
    assert "invalid YAML" in str(e)


def test_unknown_kind_is_named() -> None:
    e = error_of("apiVersion: v1\nkind: Gadget\nmetadata: {name: g}\n")
    assert "document 1 (Gadget g)" in str(e) and "unknown kind 'Gadget'" in str(e)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda t: t.replace("kind: Deployment\n", ""), "kind: required"),
        (lambda t: t.replace("  replicas: 2\n", "  replicas: -1\n"), "spec.replicas"),
        (lambda t: t.replace("{app: web}}\n    spec", "{app: other}}\n    spec"),
         "spec.template.metadata.labels"),
        (lambda t: t.replace('        command: ["python3", "-m", "http.server"]\n', ""),
         "spec.template.spec.containers[0] (web).command: required"),
        (lambda t: t.replace("metadata: {name: web, namespace: shop}", "metadata: {namespace: shop}"),
         "metadata.name: required"),
        (lambda t: t.replace("name: web, namespace", "name: Web_1, namespace"), "metadata.name"),
    ],
)  # fmt: skip
def test_deployment_errors_name_the_field(mutate, field) -> None:  # type: ignore[no-untyped-def]
    e = error_of(NS + "---\n" + mutate(DEPLOY))
    assert e.source == "app.yml"
    assert field in str(e), str(e)
    assert "document 2" in str(e)


def test_service_selecting_nothing_is_refused() -> None:
    svc = SVC.replace("{app: web}", "{app: nothing}")
    e = error_of("---\n".join([NS, DEPLOY, svc]))
    assert "Service shop/web" in str(e) and "spec.selector" in str(e) and "selects no Pod" in str(e)


def test_service_may_select_what_already_runs() -> None:
    existing = [m.obj for m in parse(NS + "---\n" + DEPLOY, source="before.yml")]
    ms = parse(SVC, source="svc.yml")
    check_references(ms, existing=existing, which=which_all)


def test_missing_command_on_machine_is_named() -> None:
    e = error_of(
        NS + "---\n" + DEPLOY.replace('"python3", "-m", "http.server"', '"no-such-binary"')
    )
    assert "containers[0] (web).command: 'no-such-binary' not found" in str(e)


def test_missing_namespace_is_refused() -> None:
    e = error_of(DEPLOY)
    assert "namespace 'shop' not found" in str(e)


def test_service_port_out_of_range() -> None:
    e = error_of("---\n".join([NS, DEPLOY, SVC.replace("port: 80,", "port: 70000,")]))
    assert "spec.ports[0].port: 70000 is not a port number" in str(e)


def test_duplicate_object_in_one_file() -> None:
    e = error_of("---\n".join([NS, NS]))
    assert "defined twice" in str(e)


def test_empty_file() -> None:
    e = error_of("# nothing\n")
    assert "holds no Kubernetes objects" in str(e)


def test_env_value_must_be_string() -> None:
    bad = DEPLOY.replace(
        '        command: ["python3", "-m", "http.server"]\n',
        '        command: ["python3"]\n        env: [{name: RATE, value: 5}]\n',
    )
    e = error_of(NS + "---\n" + bad)
    assert "env[0].value: must be a string" in str(e)


def test_example_manifest_is_valid() -> None:
    text = (REPO / "manifests" / "examples" / "emojivoto.yml").read_text()
    ms = parse(text, source="emojivoto.yml")
    kinds = {m.ref.kind for m in ms}
    assert {"Namespace", "Deployment", "Service"} <= kinds
    check_references(ms, existing=[], which=which_all)
