"""The lab takes InboundPolicy objects (stored for the control plane to read) and refuses a bad
one naming the file, the object and the field, before anything is applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodemesh.lab.manifests import ManifestError, check_references, parse

EXAMPLE = Path(__file__).resolve().parents[3] / "manifests/examples/emojivoto-authz.yml"
NS = "apiVersion: v1\nkind: Namespace\nmetadata: {name: emojivoto}\n"


def test_the_example_policies_are_accepted() -> None:
    ms = parse(EXAMPLE.read_text(), source="authz.yml")
    assert [str(m.ref) for m in ms] == [
        "InboundPolicy emojivoto/emoji-grpc",
        "InboundPolicy emojivoto/voting-grpc",
        "InboundPolicy emojivoto/web-http",
    ]
    check_references(parse(NS, source="ns.yml") + ms, existing=[], which=lambda e: e)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "selector: {matchLabels: {app: web}}\n  default: allow-all",
            "spec.default: 'allow-all' is not one of deny, cluster-authenticated, "
            "all-authenticated, all",
        ),
        (
            "selector: {}\n  rules: [{from: {networks: [10.1.2.0/99]}}]",
            "spec.rules[0].from.networks[0]: '10.1.2.0/99' is not a CIDR such as 10.0.0.0/8",
        ),
        (
            "selector: {}\n  rules: [{to: [{methods: [get]}]}]",
            "spec.rules[0].to[0].methods[0]: 'get' is not an HTTP method",
        ),
    ],
)
def test_a_bad_policy_names_file_object_and_field(spec: str, message: str) -> None:
    text = (
        "apiVersion: policy.nodemesh.io/v1alpha1\nkind: InboundPolicy\n"
        f"metadata: {{name: web, namespace: emojivoto}}\nspec:\n  {spec}\n"
    )
    with pytest.raises(ManifestError) as e:
        parse(NS + "---\n" + text, source="authz.yml")
    assert str(e.value) == f"authz.yml: document 2 (InboundPolicy web): {message}"


def test_the_api_version_must_be_ours() -> None:
    text = (
        "apiVersion: security.istio.io/v1\nkind: InboundPolicy\n"
        "metadata: {name: web, namespace: emojivoto}\nspec: {selector: {}}\n"
    )
    with pytest.raises(ManifestError, match=r"apiVersion: 'security.istio.io/v1' is not policy"):
        parse(text, source="authz.yml")


def test_a_policy_needs_its_namespace() -> None:
    ms = parse(EXAMPLE.read_text(), source="authz.yml")
    with pytest.raises(ManifestError, match="namespace 'emojivoto' not found"):
        check_references(ms, existing=[], which=lambda e: e)
