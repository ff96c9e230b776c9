"""The lab invokes CNI plugins as a runtime does: env, stdin, prevResult threading, DEL order."""

from __future__ import annotations

import json

import pytest

from nodemesh.lab.cni import CniError, PodAttachment, invocations, parse_output, pod_ip, with_prev

CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "lab",
    "plugins": [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
        {"type": "nodemesh-cni", "agentSocket": "/run/x.sock"},
    ],
}
POD = PodAttachment(
    container_id="abc123", netns="/run/netns/p", ifname="eth0",
    namespace="shop", name="web-1", uid="u-1",
)  # fmt: skip
RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0"},
        {"name": "veth1"},
        {"name": "eth0", "sandbox": "/run/netns/p"},
    ],
    "ips": [{"interface": 2, "address": "10.244.1.5/24", "gateway": "10.244.1.1"}],
}


def test_add_env_and_stdin_follow_the_spec() -> None:
    invs = invocations(CONFLIST, command="ADD", pod=POD, cni_path=["/opt/cni/bin", "/usr/lib/cni"])
    assert [i.plugin_type for i in invs] == ["bridge", "nodemesh-cni"]
    env = invs[0].env
    assert env == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": "/run/netns/p",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;"
        "K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
    }
    # Each plugin gets its own entry plus the list's name and version, and no prevResult first.
    assert invs[0].stdin["name"] == "lab" and invs[0].stdin["cniVersion"] == "1.0.0"
    assert "prevResult" not in invs[0].stdin
    assert invs[1].stdin["agentSocket"] == "/run/x.sock"
    # The runner threads the previous plugin's result into the next one.
    assert with_prev(invs[1], RESULT).stdin["prevResult"] == RESULT
    json.dumps(invs[1].stdin)  # serialisable as the runtime sends it


def test_del_runs_in_reverse_with_the_cached_result() -> None:
    invs = invocations(CONFLIST, command="DEL", pod=POD, cni_path=["/x"], cached_result=RESULT)
    assert [i.plugin_type for i in invs] == ["nodemesh-cni", "bridge"]
    assert all(i.env["CNI_COMMAND"] == "DEL" and i.stdin["prevResult"] == RESULT for i in invs)


def test_check_runs_in_order_with_the_cached_result() -> None:
    invs = invocations(CONFLIST, command="CHECK", pod=POD, cni_path=["/x"], cached_result=RESULT)
    assert [i.plugin_type for i in invs] == ["bridge", "nodemesh-cni"]
    assert invs[0].stdin["prevResult"] == RESULT


def test_bad_commands_and_lists() -> None:
    with pytest.raises(ValueError, match="unknown CNI command"):
        invocations(CONFLIST, command="RUN", pod=POD, cni_path=[])
    with pytest.raises(ValueError, match="no plugins"):
        invocations({"name": "x", "plugins": []}, command="ADD", pod=POD, cni_path=[])


def test_plugin_errors_are_read_from_stdout() -> None:
    out = json.dumps({"cniVersion": "1.0.0", "code": 11, "msg": "agent down", "details": "x"})
    with pytest.raises(CniError) as e:
        parse_output("nodemesh-cni", 1, out.encode(), b"")
    assert e.value.code == 11 and e.value.try_again and "agent down" in str(e.value)
    with pytest.raises(CniError, match="exit status 2: boom"):
        parse_output("bridge", 2, b"", b"boom")
    with pytest.raises(CniError, match="not JSON"):
        parse_output("bridge", 0, b"{nope", b"")


def test_pod_ip_comes_from_the_sandbox_interface() -> None:
    assert pod_ip(RESULT) == "10.244.1.5"
    with pytest.raises(CniError):
        pod_ip({"interfaces": [], "ips": []})


def test_plugins_run_with_the_nodes_run_and_log_dirs() -> None:
    from nodemesh.lab.cni import CniRunner

    plain = CniRunner(node_netns_path="/run/netns/n1", cni_path=["/opt/cni/bin"])
    assert plain.argv("/opt/cni/bin/bridge") == ["nsenter", "--net=/run/netns/n1",
                                                 "/opt/cni/bin/bridge"]  # fmt: skip
    node = CniRunner(node_netns_path="/run/netns/n1", cni_path=[], node_root="/lab/nodes/n1")
    argv = node.argv("/lab/nodes/n1/opt/cni/bin/nodemesh-cni")
    assert argv[:6] == ["nsenter", "--net=/run/netns/n1", "unshare", "--mount", "--propagation",
                        "slave"]  # fmt: skip
    assert argv[-2:] == ["/lab/nodes/n1/opt/cni/bin/nodemesh-cni", "/lab/nodes/n1"]
    script = argv[-4]
    # The executable is opened before the node's /run hides the lab's directory.
    assert script.index('exec 3<"$1"') < script.index("/run") < script.index("/proc/self/fd/3")
