"""Only callers the lab authorizes can tap or read stats: a lab pod (which has no token) is
refused by the public API, with or without a guessed token; the CLI on the host finds the lab
admin's token by itself and taps; the dashboard reads with its own ServiceAccount's token."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from nodemesh.lab.paths import LabPaths
from tests.integration.labkit import DEMO, lab_up, run

pytestmark = [pytest.mark.root, pytest.mark.lab]

PREFIX = "apz"  # NODEMESH_LEAKCHECK_ONLY=apz checks only this test's lab

# Run inside a pod: the public API as any pod can reach it, by the control plane's Service name.
FROM_POD = """
import sys, grpc
from nodemesh.api import public_pb2 as pb, public_pb2_grpc as pbg
token = sys.argv[1]
md = (("authorization", "Bearer " + token),) if token else ()
stub = pbg.PublicStub(grpc.insecure_channel("nodemesh-controlplane.nodemesh.svc.cluster.local:8085"))
out = {}
try:
    stub.Stat(pb.StatRequest(resource=pb.Resource(kind="deploy", namespace="emojivoto")),
              metadata=md, timeout=20)
    out["stat"] = "OK"
except grpc.RpcError as e:
    out["stat"] = e.code().name
try:
    tap = stub.Tap(pb.TapRequest(resource=pb.Resource(kind="deploy", namespace="emojivoto",
                                                       name="web")), metadata=md, timeout=5)
    next(iter(tap))
    out["tap"] = "OK"
except grpc.RpcError as e:
    out["tap"] = e.code().name
print(out)
"""


def nm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(*args, check=check, traceback_ok=False)


@pytest.fixture
def lab() -> Iterator[LabPaths]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the lab creates network namespaces")
    with lab_up(PREFIX, *DEMO) as paths:
        yield paths


def from_pod(lab: LabPaths, token: str) -> dict[str, str]:
    res = nm("lab", "exec", "--name", lab.name, "-n", "emojivoto", "deploy/vote-bot", "--",
             sys.executable, "-c", FROM_POD, token)  # fmt: skip
    return eval(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]  # noqa: S307


def test_a_pod_is_refused_and_the_host_cli_and_the_dashboard_are_served(lab: LabPaths) -> None:
    # The lab admin's token is root's alone.
    admin = lab.access / "admin.token"
    assert (
        admin.stat().st_mode & 0o077 == 0
        and (lab.access / "access.json").stat().st_mode & 0o077 == 0
    )

    # A pod has no token: refused, before any event or figure.
    assert from_pod(lab, "") == {"stat": "UNAUTHENTICATED", "tap": "UNAUTHENTICATED"}
    assert from_pod(lab, "guessed-" + uuid.uuid4().hex) == {
        "stat": "UNAUTHENTICATED", "tap": "UNAUTHENTICATED"}  # fmt: skip

    # The CLI as root on the host finds the lab admin's token by itself and taps vote-bot's calls.
    res = nm("tap", "deploy/web", "-n", "emojivoto", "--lab", lab.name, "--duration", "8",
             "-o", "json")  # fmt: skip
    events = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert events, res.stdout + res.stderr
    assert nm("stat", "deploy", "-n", "emojivoto", "--lab", lab.name).stdout.count("emojivoto") >= 4

    # The dashboard reads with its own ServiceAccount's token.
    status = json.loads(nm("lab", "status", "--name", lab.name, "-o", "json").stdout)
    fwd = next(f for f in status["forwards"] if f["service"] == "nodemesh-dashboard")
    url = f"http://{fwd['host']}:{fwd['local_port']}/api/deployments?namespace=emojivoto"
    with urllib.request.urlopen(url, timeout=20) as resp:
        body = json.loads(resp.read())
    assert {d["name"] for d in body["deployments"]} >= {"web", "vote-bot"}, body
