"""Bad input and unreachable control planes: one clear line, a non-zero exit, no traceback."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from nodemesh.cli.main import cli


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), env=env or {}, catch_exceptions=False)


def assert_one_line_error(res, code: int, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.output
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture
def closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"127.0.0.1:{port}"


@pytest.mark.parametrize(
    "args",
    [
        ["stat", "deploy"],
        ["edges"],
        ["version"],
        ["tap", "deploy/web", "--duration", "1"],
        ["top", "deploy/web", "--duration", "1"],
        ["check"],
    ],
)
def test_unreachable_control_plane(closed_port: str, args: list[str]) -> None:
    res = invoke(*args, "--api-addr", closed_port)
    if args[0] == "check":
        assert res.exit_code == 1 and "[FAIL] public API answers" in res.output
        assert "hint:" in res.output
        return
    assert_one_line_error(res, 1, "cannot reach the control plane", closed_port)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["stat", "deployz"], "unknown resource 'deployz'"),
        (["stat", "deploy/"], "has no name"),
        (["stat", "deploy/web", "web"], "give the name once"),
        (["stat", "deploy", "-t", "5s"], "outside 10s-15m"),
        (["stat", "deploy", "-t", "1h"], "not a duration"),
        (["stat", "deploy", "-o", "yaml"], "'yaml' is not one of"),
        (["stat", "deploy", "--from", "deploy/a", "--to", "deploy/b"], "cannot be combined"),
        (["stat", "deploy", "--to", "bogus/x"], "unknown resource 'bogus'"),
        (["edges", "svc"], "deploy or pod"),
        (["tap", "deploy/web", "--max-rps", "0"], "--max-rps"),
        (["stat", "deploy", "--api-addr", "nohost"], "is not HOST:PORT"),
        (["install", "--registry", "Bad Registry"], "--registry"),
        (["install", "-n", "Not_A_Namespace"], "--nodemesh-namespace"),
        (["install", "--controller-replicas", "0"], "replicas"),
        (["install", "--web-replicas", "100"], "--web-replicas 100 is not from 1 to 99"),
        (["install", "--trust-domain", "UPPER/case"], "--trust-domain"),
        (["install", "--cni-conf-dir", "etc/cni"], "absolute path"),
        (["install", "--image-pull-policy", "Sometimes"], "--image-pull-policy"),
    ],
)
def test_bad_flag_values(args: list[str], needle: str) -> None:
    res = invoke(*args, env={"NODEMESH_API_ADDR": "127.0.0.1:9"})
    assert_one_line_error(res, 2, needle)


def test_no_such_namespace_and_no_such_resource(api_server, run) -> None:
    api_server.load_world(traffic=False)
    assert_one_line_error(
        run("stat", "deploy", "-n", "nosuch"), 1, "namespace 'nosuch' does not exist"
    )
    assert_one_line_error(run("edges", "-n", "nosuch"), 1, "namespace 'nosuch' does not exist")
    assert_one_line_error(run("stat", "ns", "nosuch"), 1, "namespace 'nosuch' does not exist")
    assert_one_line_error(
        run("stat", "deploy/nosuch", "-n", "emojivoto"), 1, "no deploy named 'nosuch'"
    )


def test_no_lab_and_no_kubeconfig_says_how_to_get_one(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("nodemesh.cli.target.RUN_ROOT", tmp_path / "none")
    env = {"HOME": str(tmp_path), "KUBECONFIG": "", "NODEMESH_API_ADDR": "", "NODEMESH_LAB": ""}
    assert_one_line_error(invoke("stat", "deploy", env=env), 1, "no running lab", "--api-addr")


def test_lab_named_that_does_not_exist(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("nodemesh.cli.target.RUN_ROOT", tmp_path)
    monkeypatch.setattr("nodemesh.lab.paths.RUN_ROOT", tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "lab.json").write_text("{}")
    res = invoke("stat", "deploy", "--lab", "nolab", env={"NODEMESH_API_ADDR": ""})
    assert_one_line_error(res, 1, "no lab named 'nolab'", "labs here: other")
    res = invoke("stat", "deploy", "--lab", "Bad-Name", env={"NODEMESH_API_ADDR": ""})
    assert_one_line_error(res, 1, "lab name 'Bad-Name'")
