"""nodemesh-cni chained after the real bridge + host-local plugins, in throwaway namespaces.

The bridge plugin runs inside a "node" network namespace this test creates (its bridge and veth
never touch the host), the pod is a second namespace; both are removed afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cni_harness import NODE_PATH, TestAgent, run_plugin

BRIDGE = Path("/usr/lib/cni/bridge")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(not BRIDGE.exists(), reason="needs containernetworking-plugins"),
]


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    node, pod = f"nmcni-node-{suffix}", f"nmcni-pod-{suffix}"
    created = []
    try:
        for name in (node, pod):
            subprocess.run(["ip", "netns", "add", name], check=True)
            created.append(name)
        yield node, pod
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], check=False)
        leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert suffix not in leftovers


def _bridge(command: str, *, node: str, pod: str, conf: dict[str, object]) -> bytes:
    env = {
        "PATH": NODE_PATH,
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": f"/run/netns/{pod}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(BRIDGE.parent),
    }
    proc = subprocess.run(
        ["ip", "netns", "exec", node, str(BRIDGE)],
        input=json.dumps(conf).encode(),
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    return proc.stdout


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_chained_after_bridge_passes_the_real_result_through(
    plugin: Path, agent: TestAgent, namespaces: tuple[str, str], tmp_path: Path, version: str
) -> None:
    node, pod = namespaces
    bridge_conf: dict[str, object] = {
        "cniVersion": version,
        "name": "lab",
        "type": "bridge",
        "bridge": "nm0",
        "isGateway": True,
        "ipam": {"type": "host-local", "subnet": "10.244.7.0/24", "dataDir": str(tmp_path)},
    }
    result = json.loads(_bridge("ADD", node=node, pod=pod, conf=bridge_conf))
    conf = {
        "cniVersion": version,
        "name": "lab",
        "type": "nodemesh-cni",
        "agentSocket": str(agent.path),
        "logFile": "",
        "prevResult": result,
    }
    env = {"container_id": "c0ffee", "netns": f"/run/netns/{pod}"}

    out = run_plugin(plugin, command="ADD", config=conf, **env)  # type: ignore[arg-type]

    assert out.returncode == 0, out.stderr
    assert out.json() == result
    [request] = agent.requests
    assert request.pod is not None
    [ip] = request.pod.ips
    in_pod = json.loads(
        subprocess.run(
            ["ip", "-n", pod, "-j", "addr", "show", "eth0"], capture_output=True, check=True
        ).stdout
    )
    assert ip.ip in [a["local"] for a in in_pod[0]["addr_info"]]
    assert request.pod.interfaces[ip.interface or 0].sandbox == f"/run/netns/{pod}"

    run_plugin(plugin, command="DEL", config=conf, **env).succeeded_silently()  # type: ignore[arg-type]
    _bridge("DEL", node=node, pod=pod, conf={**bridge_conf, "prevResult": result})
