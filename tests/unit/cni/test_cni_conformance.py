"""nodemesh-cni driven as a container runtime drives it: env + stdin in, stdout + exit out.

Every test runs twice: against the .venv console script and against the zipapp build.sh makes.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from cni_harness import NODE_PATH, TestAgent, interfaces_result, plugin_config, run_plugin
from nodemesh_cni.protocol import Reply

VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


# --- VERSION ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_version_reports_every_supported_version(plugin: Path, version: str) -> None:
    out = run_plugin(plugin, command="VERSION", config={"cniVersion": version})
    assert out.returncode == 0
    assert out.json() == {"cniVersion": version, "supportedVersions": VERSIONS}


@pytest.mark.parametrize("stdin", [b"", b"not json", b'{"cniVersion": "9.0.0"}'])
def test_version_answers_whatever_the_runtime_sends(plugin: Path, stdin: bytes) -> None:
    out = run_plugin(plugin, command="VERSION", config=stdin)
    assert out.returncode == 0
    assert out.json()["supportedVersions"] == VERSIONS


# --- ADD --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_add_enrols_with_the_agent_and_passes_prev_result_through(
    plugin: Path, agent: TestAgent, version: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "cni.log"
    conf = plugin_config(version, socket_path=agent.path, log_file=log_file)
    out = run_plugin(plugin, command="ADD", config=conf)

    assert out.returncode == 0, out.stderr
    assert out.json() == conf["prevResult"]
    [request] = agent.requests
    assert request.command == "add"
    pod = request.pod
    assert pod is not None
    assert (pod.namespace, pod.name, pod.uid) == ("shop", "web-7d4", "5c1b-77")
    assert (pod.container_id, pod.netns, pod.ifname) == (
        "0123456789abcdef",
        "/var/run/netns/cni-1234",
        "eth0",
    )
    assert [ip.address for ip in pod.ips] == ["10.244.1.17/24"]
    assert pod.ips[0].gateway == "10.244.1.1" and pod.ips[0].interface == 2
    assert pod.interfaces[2].name == "eth0"
    assert pod.interfaces[2].sandbox == "/var/run/netns/cni-1234"
    assert "enrolled" in log_file.read_text()


def test_add_returns_only_after_the_agent_answered(plugin: Path, agent: TestAgent) -> None:
    agent.delay = 0.4
    out = run_plugin(plugin, command="ADD", config=plugin_config("1.0.0", socket_path=agent.path))
    assert out.returncode == 0
    assert out.elapsed >= 0.4
    assert len(agent.requests) == 1


def test_add_prev_result_is_printed_unchanged_with_unknown_fields(
    plugin: Path, agent: TestAgent
) -> None:
    conf = plugin_config("1.1.0", socket_path=agent.path)
    prev = conf["prevResult"]
    assert isinstance(prev, dict)
    prev["mtu"] = 1450
    prev["x-vendor"] = {"nested": [1, 2.5, None, True, "ünïcode"]}
    out = run_plugin(plugin, command="ADD", config=conf)
    assert out.returncode == 0
    assert out.json() == prev
    assert list(out.json()) == list(prev)  # key order too


def test_add_not_meshed_is_a_success(plugin: Path, agent: TestAgent) -> None:
    agent.respond = lambda req: Reply.to(req, status="ok", meshed=False, message="ns unlabelled")
    conf = plugin_config("1.0.0", socket_path=agent.path)
    out = run_plugin(plugin, command="ADD", config=conf)
    assert out.returncode == 0
    assert out.json() == conf["prevResult"]


@pytest.mark.parametrize("namespace", ["kube-system", "nodemesh"])
def test_add_skips_excluded_namespaces_without_asking_the_agent(
    plugin: Path, agent: TestAgent, namespace: str
) -> None:
    conf = plugin_config("1.0.0", socket_path=agent.path)
    args = f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=coredns-1;K8S_POD_UID=9"
    out = run_plugin(plugin, command="ADD", config=conf, cni_args=args)
    assert out.returncode == 0
    assert out.json() == conf["prevResult"]
    assert agent.requests == []


def test_add_honours_a_configured_exclusion_list(plugin: Path, agent: TestAgent) -> None:
    conf = plugin_config("1.0.0", socket_path=agent.path, excludeNamespaces=["shop"])
    assert run_plugin(plugin, command="ADD", config=conf).returncode == 0
    assert agent.requests == []
    # kube-system is no longer excluded once the list is given explicitly.
    args = "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=a"
    assert run_plugin(plugin, command="ADD", config=conf, cni_args=args).returncode == 0
    assert [r.pod.namespace for r in agent.requests if r.pod] == ["kube-system"]


@pytest.mark.parametrize("version", VERSIONS)
def test_add_without_an_agent_fails_closed_with_try_again_later(
    plugin: Path, sock_dir: Path, version: str
) -> None:
    socket_path = sock_dir / "cni.sock"
    out = run_plugin(plugin, command="ADD", config=plugin_config(version, socket_path=socket_path))
    err = out.error()
    assert err["code"] == 11
    assert err["cniVersion"] == version
    assert err["msg"] == f"nodemesh agent not reachable at {socket_path}: try again later"
    assert "try again later" in out.stderr


def test_add_with_a_stale_socket_file_fails_with_try_again_later(
    plugin: Path, sock_dir: Path
) -> None:
    # What an agent killed with -9 leaves behind: the socket file, nobody listening.
    import socket

    path = sock_dir / "cni.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    out = run_plugin(plugin, command="ADD", config=plugin_config("1.0.0", socket_path=path))
    assert out.error()["code"] == 11


def test_add_times_out_on_a_silent_agent(plugin: Path, agent: TestAgent) -> None:
    agent.hang = True
    conf = plugin_config("1.0.0", socket_path=agent.path, agentTimeoutSeconds=0.5)
    out = run_plugin(plugin, command="ADD", config=conf)
    err = out.error()
    assert err["code"] == 11
    assert "0.5s" in str(err["details"])
    assert 0.5 <= out.elapsed < 5


def test_add_agent_hanging_up_is_try_again_later(plugin: Path, agent: TestAgent) -> None:
    agent.respond = lambda req: None
    out = run_plugin(plugin, command="ADD", config=plugin_config("1.0.0", socket_path=agent.path))
    assert out.error()["code"] == 11


def test_add_agent_not_ready_is_try_again_later(plugin: Path, agent: TestAgent) -> None:
    agent.respond = lambda req: Reply.to(req, status="retry", message="not synced yet")
    out = run_plugin(plugin, command="ADD", config=plugin_config("1.0.0", socket_path=agent.path))
    err = out.error()
    assert err["code"] == 11
    assert "not synced yet" in str(err["msg"])


def test_add_agent_failure_is_a_plugin_error(plugin: Path, agent: TestAgent) -> None:
    agent.respond = lambda req: Reply.to(req, status="error", message="netns vanished")
    out = run_plugin(plugin, command="ADD", config=plugin_config("1.0.0", socket_path=agent.path))
    err = out.error()
    assert err["code"] == 100
    assert "netns vanished" in str(err["msg"])


def test_add_reply_for_another_request_is_rejected(plugin: Path, agent: TestAgent) -> None:
    agent.respond = lambda req: Reply(id="someone-else", status="ok", meshed=True)
    out = run_plugin(plugin, command="ADD", config=plugin_config("1.0.0", socket_path=agent.path))
    assert out.error()["code"] == 102


def test_add_fail_open_lets_the_pod_start_without_an_agent(plugin: Path, sock_dir: Path) -> None:
    conf = plugin_config("1.0.0", socket_path=sock_dir / "cni.sock", failurePolicy="fail-open")
    out = run_plugin(plugin, command="ADD", config=conf)
    assert out.returncode == 0
    assert out.json() == conf["prevResult"]
    assert "fail-open" in out.stderr


def test_add_for_a_non_kubernetes_container_passes_through(plugin: Path, agent: TestAgent) -> None:
    conf = plugin_config("1.0.0", socket_path=agent.path)
    out = run_plugin(plugin, command="ADD", config=conf, cni_args=None)
    assert out.json() == conf["prevResult"]
    assert agent.requests == []


# --- DEL --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_del_without_an_agent_succeeds(plugin: Path, sock_dir: Path, version: str) -> None:
    conf = plugin_config(version, socket_path=sock_dir / "cni.sock")
    out = run_plugin(plugin, command="DEL", config=conf)
    out.succeeded_silently()
    assert "not reachable" in out.stderr


def test_del_tells_the_agent_and_is_idempotent(plugin: Path, agent: TestAgent) -> None:
    conf = plugin_config("1.0.0", socket_path=agent.path)
    for _ in range(2):
        run_plugin(plugin, command="DEL", config=conf).succeeded_silently()
    assert [r.command for r in agent.requests] == ["del", "del"]
    assert agent.requests[0].pod is not None
    assert agent.requests[0].pod.container_id == "0123456789abcdef"


def test_del_without_netns_or_prev_result_succeeds(plugin: Path, agent: TestAgent) -> None:
    conf = plugin_config("1.0.0", socket_path=agent.path, prev_result=False)
    run_plugin(plugin, command="DEL", config=conf, netns=None).succeeded_silently()
    [request] = agent.requests
    assert request.pod is not None and request.pod.netns == ""


def test_del_succeeds_when_the_agent_reports_an_error(plugin: Path, agent: TestAgent) -> None:
    agent.respond = lambda req: Reply.to(req, status="error", message="busy")
    out = run_plugin(plugin, command="DEL", config=plugin_config("1.0.0", socket_path=agent.path))
    out.succeeded_silently()
    assert "busy" in out.stderr


# --- CHECK ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_passes_when_the_agent_confirms(plugin: Path, agent: TestAgent, version: str) -> None:
    out = run_plugin(plugin, command="CHECK", config=plugin_config(version, socket_path=agent.path))
    out.succeeded_silently()
    assert [r.command for r in agent.requests] == ["check"]


def test_check_fails_when_rules_are_missing(plugin: Path, agent: TestAgent) -> None:
    agent.respond = lambda req: Reply.to(req, status="error", message="chain NODEMESH_OUTPUT gone")
    out = run_plugin(plugin, command="CHECK", config=plugin_config("1.0.0", socket_path=agent.path))
    err = out.error()
    assert err["code"] == 101
    assert "NODEMESH_OUTPUT" in str(err["msg"])


def test_check_without_an_agent_fails(plugin: Path, sock_dir: Path) -> None:
    conf = plugin_config("1.0.0", socket_path=sock_dir / "cni.sock")
    assert run_plugin(plugin, command="CHECK", config=conf).error()["code"] == 11


def test_check_is_not_part_of_0_3_1(plugin: Path, agent: TestAgent) -> None:
    out = run_plugin(plugin, command="CHECK", config=plugin_config("0.3.1", socket_path=agent.path))
    assert out.error()["code"] == 1
    assert agent.requests == []


# --- STATUS and GC (1.1.0) --------------------------------------------------------------------


def test_status_succeeds_when_the_agent_answers(plugin: Path, agent: TestAgent) -> None:
    conf = plugin_config("1.1.0", socket_path=agent.path, prev_result=False)
    run_plugin(plugin, command="STATUS", config=conf).succeeded_silently()
    assert [r.command for r in agent.requests] == ["status"]


def test_status_is_plugin_not_available_without_an_agent(plugin: Path, sock_dir: Path) -> None:
    conf = plugin_config("1.1.0", socket_path=sock_dir / "cni.sock", prev_result=False)
    err = run_plugin(plugin, command="STATUS", config=conf).error()
    assert err["code"] == 50
    assert err["msg"] == "plugin not available"


def test_status_is_plugin_not_available_while_the_agent_is_not_ready(
    plugin: Path, agent: TestAgent
) -> None:
    agent.respond = lambda req: Reply.to(req, status="retry", message="syncing")
    conf = plugin_config("1.1.0", socket_path=agent.path, prev_result=False)
    assert run_plugin(plugin, command="STATUS", config=conf).error()["code"] == 50


@pytest.mark.parametrize("command", ["STATUS", "GC"])
def test_status_and_gc_need_1_1_0(plugin: Path, agent: TestAgent, command: str) -> None:
    conf = plugin_config("1.0.0", socket_path=agent.path, prev_result=False)
    assert run_plugin(plugin, command=command, config=conf).error()["code"] == 1


def test_gc_forwards_the_valid_attachments(plugin: Path, agent: TestAgent) -> None:
    valid = [
        {"containerID": "aaa111", "ifname": "eth0"},
        {"containerID": "bbb222", "ifname": "net1"},
    ]
    conf = plugin_config("1.1.0", socket_path=agent.path, prev_result=False)
    conf["cni.dev/valid-attachments"] = valid
    run_plugin(plugin, command="GC", config=conf).succeeded_silently()
    [request] = agent.requests
    assert [(a.container_id, a.ifname) for a in request.attachments] == [
        ("aaa111", "eth0"),
        ("bbb222", "net1"),
    ]


def test_gc_without_an_agent_succeeds(plugin: Path, sock_dir: Path) -> None:
    conf = plugin_config("1.1.0", socket_path=sock_dir / "cni.sock", prev_result=False)
    conf["cni.dev/valid-attachments"] = []
    run_plugin(plugin, command="GC", config=conf).succeeded_silently()


# --- malformed input --------------------------------------------------------------------------


def _add_conf(*, drop: str = "") -> dict[str, object]:
    return {k: v for k, v in plugin_config("1.0.0").items() if k != drop}


MALFORMED = {
    "bad JSON": (dict(config=b'{"cniVersion": "1.0.0", "name": '), 6),
    "JSON that is not an object": (dict(config=b'["cniVersion", "1.0.0"]'), 6),
    "not UTF-8": (dict(config=b'{"name": "\xff\xfe"}'), 6),
    "absurdly deep JSON": (dict(config=b"[" * 100_000), 6),
    "missing CNI_COMMAND": (dict(command=None), 4),
    "unknown CNI_COMMAND": (dict(command="ATTACH"), 4),
    "missing CNI_NETNS": (dict(netns=None), 4),
    "missing CNI_CONTAINERID": (dict(container_id=None), 4),
    "missing CNI_IFNAME": (dict(ifname=None), 4),
    "container id with a slash": (dict(container_id="../etc"), 4),
    "ifname longer than 15": (dict(ifname="a-very-long-ifname0"), 4),
    "CNI_ARGS pair without =": (dict(cni_args="K8S_POD_NAMESPACE;K8S_POD_NAME=x"), 4),
    "CNI_ARGS pair with two =": (dict(cni_args="K8S_POD_NAMESPACE=a=b"), 4),
    "unknown cniVersion": (dict(config={**_add_conf(), "cniVersion": "2.0.0"}), 1),
    "missing cniVersion": (dict(config=_add_conf(drop="cniVersion")), 7),
    "missing network name": (dict(config=_add_conf(drop="name")), 7),
    "bad failurePolicy": (dict(config={**_add_conf(), "failurePolicy": "maybe"}), 7),
    "bad excludeNamespaces": (dict(config={**_add_conf(), "excludeNamespaces": "kube-system"}), 7),
    "bad logLevel": (dict(config={**_add_conf(), "logLevel": "loud"}), 7),
    "prevResult not an object": (dict(config={**_add_conf(), "prevResult": []}), 7),
    "prevResult ips not a list": (
        dict(config={**_add_conf(), "prevResult": {"cniVersion": "1.0.0", "ips": {}}}),
        7,
    ),
    "prevResult ip without address": (
        dict(config={**_add_conf(), "prevResult": {"cniVersion": "1.0.0", "ips": [{}]}}),
        7,
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_add_gets_the_spec_error_code(plugin: Path, agent: TestAgent, case: str) -> None:
    overrides, code = MALFORMED[case]
    kwargs: dict[str, object] = {"command": "ADD", "config": _add_conf(), **overrides}
    if isinstance(kwargs["config"], dict):
        kwargs["config"] = {**kwargs["config"], "agentSocket": str(agent.path)}
    out = run_plugin(plugin, **kwargs)  # type: ignore[arg-type]
    err = out.error()
    assert err["code"] == code, err
    assert agent.requests == [], "a malformed invocation must not reach the agent"
    assert out.stderr, "the failure is logged on stderr"


@pytest.mark.parametrize("version", VERSIONS)
def test_add_without_prev_result_is_invalid_config(
    plugin: Path, agent: TestAgent, version: str
) -> None:
    conf = plugin_config(version, socket_path=agent.path, prev_result=False)
    err = run_plugin(plugin, command="ADD", config=conf).error()
    assert err["code"] == 7
    assert err["cniVersion"] == version
    assert "prevResult" in str(err["msg"])


def test_error_for_an_undecodable_config_uses_the_latest_version(plugin: Path) -> None:
    assert run_plugin(plugin, command="ADD", config=b"{").error()["cniVersion"] == "1.1.0"


# --- output discipline and speed --------------------------------------------------------------


def test_logs_never_reach_stdout_even_at_debug(
    plugin: Path, agent: TestAgent, tmp_path: Path
) -> None:
    log_file = tmp_path / "cni.log"
    conf = plugin_config("1.0.0", socket_path=agent.path, log_file=log_file, logLevel="debug")
    args = "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns"
    out = run_plugin(plugin, command="ADD", config=conf, cni_args=args)
    assert out.stdout == (json.dumps(conf["prevResult"]) + "\n").encode()
    assert "excluded" in out.stderr
    assert "excluded" in log_file.read_text()


def test_unwritable_log_file_does_not_fail_the_add(plugin: Path, agent: TestAgent) -> None:
    conf = plugin_config("1.0.0", socket_path=agent.path, log_file="/proc/nodemesh/cni.log")
    out = run_plugin(plugin, command="ADD", config=conf)
    assert out.returncode == 0
    assert out.json() == conf["prevResult"]
    assert "cannot open log file" in out.stderr


def _imported(argv: list[str], stdin: bytes) -> tuple[set[str], subprocess.CompletedProcess[bytes]]:
    """Top-level names of the modules `argv` imports (Python's -X importtime, via env)."""
    env = {"PATH": NODE_PATH, "CNI_COMMAND": "VERSION", "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=60)
    names = {
        line.split("|")[2].strip().split(".")[0]
        for line in proc.stderr.decode().splitlines()
        if line.startswith("import time:") and "cumulative" not in line
    }
    return names, proc


def test_version_imports_nothing_but_the_standard_library(plugin: Path) -> None:
    """The floor under every pod's ADD is the interpreter's start: the plugin imports only the
    standard library and itself (a tripwire for a heavy import; it was a 400 ms wall-time bound,
    which a loaded CI machine broke; speed figures belong in bench/)."""
    imported, proc = _imported([str(plugin)], b'{"cniVersion": "1.0.0"}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["supportedVersions"] == VERSIONS
    assert "nodemesh_cni" in imported, proc.stderr[-2000:]
    # What the interpreter itself loads at start (site, the distribution's hooks) is not ours.
    interpreter = plugin.read_bytes().split(b"\n", 1)[0].removeprefix(b"#!").decode().split()
    baseline, _ = _imported([*interpreter, "-c", "pass"], b"")
    foreign = imported - baseline - {"nodemesh_cni"} - set(sys.stdlib_module_names)
    assert not foreign, f"the CNI plugin imports {sorted(foreign)}"


def test_add_round_trip_time(plugin: Path, agent: TestAgent) -> None:
    conf = plugin_config("1.0.0", socket_path=agent.path)
    runs = [run_plugin(plugin, command="ADD", config=conf) for _ in range(20)]
    assert all(r.json() == interfaces_result("1.0.0") for r in runs)
    median_ms = statistics.median(r.elapsed for r in runs) * 1000
    print(f"\n{plugin}: ADD (instant agent) median {median_ms:.1f} ms over 20 runs")
    assert len(agent.requests) == 20
