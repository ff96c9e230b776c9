"""`nodemesh migrate` against a cluster, through a stand-in kubectl that answers from a file and
records what it was asked to apply."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from nodemesh.cli.main import cli
from nodemesh.migrate.backends import BackendError, KubectlBackend
from nodemesh.migrate.plan import Change
from tests.unit.migrate.cluster import emojivoto

FAKE = """#!{python}
import json, sys
from pathlib import Path
here = Path(sys.argv[0]).parent
args = sys.argv[1:]
with open(here / "calls.jsonl", "a") as f:
    f.write(json.dumps({{"args": args, "stdin": sys.stdin.read() if "-f" in args else ""}}) + "\\n")
if "get" in args:
    kinds = args[args.index("get") + 1]
    objs = json.loads((here / "objects.json").read_text())
    if kinds == "ingresses":
        items = [o for o in objs if o["kind"] == "Ingress"]
    else:
        items = [o for o in objs if o["kind"] != "Ingress"]
    print(json.dumps({{"items": items}}))
elif "apply" in args:
    print("configured")
elif "delete" in args and "nosuch" in args:
    print("Error from server (Forbidden): nope", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture
def kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    exe = tmp_path / "kubectl"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "objects.json").write_text(json.dumps(emojivoto()))
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("NODEMESH_LAB", raising=False)
    return tmp_path


def calls(where: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (where / "calls.jsonl").read_text().splitlines()]


def test_status_and_plan_read_the_cluster_through_kubectl(kubectl: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["migrate", "status", "--context", "prod"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0] == "cluster (context prod):"
    assert "router emojivoto/router: served by deployment/router -n emojivoto" in res.output
    assert "EMOJISVC_HOST=router.emojivoto:8081" in res.output
    assert calls(kubectl)[0]["args"][:3] == ["--context", "prod", "get"]
    res = runner.invoke(cli, ["migrate", "plan", "--context", "prod", "-o", "json"])
    assert res.exit_code == 0, res.output
    states = [(s["id"], s["state"]) for s in json.loads(res.output)["steps"]]
    assert states[0] == ("mesh-ingress", "todo") and states[3] == ("edge", "nothing to do")


def test_apply_dry_run_changes_nothing_and_a_blocked_step_says_why(kubectl: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["migrate", "apply", "mesh-ingress", "--dry-run", "--context", "p"])
    assert res.exit_code == 0, res.output
    assert "would: label namespace ingress-nginx nodemesh.io/mesh=enabled" in res.output
    assert not [c for c in calls(kubectl) if "apply" in c["args"]]
    res = runner.invoke(cli, ["migrate", "apply", "strict", "--context", "p"])
    assert res.exit_code == 1
    assert "step strict is blocked: namespaces not meshed yet" in res.output


def test_the_backend_applies_whole_objects_and_deletes_by_name(kubectl: Path) -> None:
    backend = KubectlBackend(context="p", kubeconfig=None)
    obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    backend.apply([Change("Namespace", "", "shop", None, obj, "x"),
                   Change("Service", "shop", "router", {"kind": "Service"}, None, "y")])  # fmt: skip
    applied, deleted = calls(kubectl)
    assert applied["args"] == ["--context", "p", "apply", "-f", "-"]
    assert yaml.safe_load(applied["stdin"]) == obj
    assert deleted["args"] == ["--context", "p", "delete", "service", "router",
                               "--ignore-not-found", "-n", "shop"]  # fmt: skip
    with pytest.raises(BackendError, match=r"kubectl delete service nosuch .*Forbidden"):
        backend.apply([Change("Service", "shop", "nosuch", {"kind": "Service"}, None, "z")])
