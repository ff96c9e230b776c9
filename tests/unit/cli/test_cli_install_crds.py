"""`nodemesh install` renders the InboundPolicy CRD with a schema that takes what the lab and the
control plane take (the example policies) and refuses what they refuse, and lets the control
plane watch the kind."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from nodemesh import authz
from nodemesh.cli.install import controlplane, crds
from nodemesh.cli.install.values import InstallValues

EXAMPLE = Path(__file__).resolve().parents[3] / "manifests/examples/emojivoto-authz.yml"


def schema() -> dict:
    crd = crds.inbound_policy()
    assert crd["metadata"]["name"] == "inboundpolicies.policy.nodemesh.io"
    assert crd["spec"]["names"]["kind"] == "InboundPolicy"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    return version["schema"]["openAPIV3Schema"]


def test_the_schema_accepts_the_example_policies_the_control_plane_reads() -> None:
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    assert len(docs) == 3
    for doc in docs:
        jsonschema.validate(doc, schema())
        authz.read_spec(doc)


@pytest.mark.parametrize(
    "spec",
    [
        {},  # no selector
        {"selector": {}, "default": "allow"},
        {"selector": {}, "ports": [70000]},
        {"selector": {}, "rules": [{}]},
        {"selector": {}, "rules": [{"to": []}]},
        {"selector": {}, "rules": [{"from": {"serviceAccounts": [{"namespace": "x"}]}}]},
    ],
)
def test_the_schema_refuses_what_the_reader_refuses(spec: dict) -> None:
    obj = {"apiVersion": authz.API_VERSION, "kind": authz.KIND, "metadata": {"name": "p"}}
    obj["spec"] = spec
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, schema())
    with pytest.raises(authz.SpecError):
        authz.read_spec(obj)


def test_the_control_plane_may_list_and_watch_policies() -> None:
    (role, *_) = [o for o in controlplane.rbac(InstallValues()) if o["kind"] == "ClusterRole"]
    rule = next(r for r in role["rules"] if r["apiGroups"] == ["policy.nodemesh.io"])
    assert rule["resources"] == ["inboundpolicies"]
    assert set(rule["verbs"]) == {"get", "list", "watch"}
