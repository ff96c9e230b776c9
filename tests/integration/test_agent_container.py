"""The agent does its rule work inside its container as `nodemesh install` renders it: read-only
root filesystem, only the declared volumes writable, only the declared capabilities. On a real
kubelet + containerd node `iptables-legacy-restore -w` failed there with "can't open lock file
/run/xtables.lock: Read-only file system", so no meshed pod could start."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from rendered_container import container_command

from nodemesh.cli.main import cli

pytestmark = pytest.mark.root
# The image's contents: the interpreter's environment and the checkout (a CI clone may be
# under /tmp, which the container's emptyDir covers).
KEEP = (Path(sys.prefix), Path(__file__).resolve().parents[2])


def _agent_pod_spec() -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["install", "-n", "mesh-system"])
    assert result.exit_code == 0, result.output
    ds = next(d for d in yaml.safe_load_all(result.output) if d and d["kind"] == "DaemonSet")
    return ds["spec"]["template"]["spec"]  # type: ignore[no-any-return]


@pytest.fixture
def pod_netns() -> Iterator[str]:
    name = "nmct-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _host_paths(spec: dict[str, Any], tmp: Path) -> dict[str, Path]:
    """A stand-in on this machine for every volume the pod declares."""
    paths: dict[str, Path] = {}
    for volume in spec["volumes"]:
        if "hostPath" in volume:
            host = volume["hostPath"]["path"]
            if host in ("/var/run/netns", "/run/netns"):
                paths[host] = Path("/run/netns")  # the real one: pod netns live there
                continue
            stand_in = tmp / "host" / host.strip("/").replace("/", "_")
            if volume["hostPath"].get("type") == "FileOrCreate":
                stand_in.parent.mkdir(parents=True, exist_ok=True)
                stand_in.touch()
            else:
                stand_in.mkdir(parents=True, exist_ok=True)
            paths[host] = stand_in
        elif "emptyDir" not in volume:
            stand_in = tmp / "volumes" / volume["name"]
            stand_in.mkdir(parents=True, exist_ok=True)
            paths[volume["name"]] = stand_in
    return paths


def test_the_agent_container_as_rendered_can_install_a_pods_rules(
    pod_netns: str, tmp_path: Path
) -> None:
    spec = _agent_pod_spec()
    code = (
        "from nodeagent.rules import transparent as t\n"
        f"print(t.apply({pod_netns!r}, t.TransparentPlan()))\n"
        f"assert not t.problems({pod_netns!r}, t.TransparentPlan())\n"
    )
    cmd = container_command(
        spec,
        "agent",
        host_paths=_host_paths(spec, tmp_path),
        scratch=tmp_path,
        argv=[sys.executable, "-c", code],
        keep_visible=KEEP,
    )
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    saved = subprocess.run(
        ["ip", "netns", "exec", pod_netns, "iptables-legacy-save", "-t", "mangle"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "NODEMESH_MANGLE_OUTPUT" in saved.stdout


def test_the_container_view_is_read_only_where_rendered(tmp_path: Path) -> None:
    """The harness itself: the root filesystem is read-only and capabilities are the declared."""
    spec = _agent_pod_spec()
    probe = (
        "import os, socket\n"
        "for p in ('/etc/nodemesh-probe', '/run/nodemesh-probe'):\n"
        "    try:\n"
        "        open(p, 'w')\n"
        "    except OSError as e:\n"
        "        assert e.errno == 30, (p, e)\n"  # EROFS
        "    else:\n"
        "        raise AssertionError(p + ' writable')\n"
        "open('/tmp/ok', 'w').write('x')\n"
        "caps = [l for l in open('/proc/self/status') if l.startswith('CapBnd')][0]\n"
        "print(caps.split()[1])\n"
    )
    cmd = container_command(
        spec, "agent", host_paths=_host_paths(spec, tmp_path), scratch=tmp_path,
        argv=[sys.executable, "-c", probe], keep_visible=KEEP,
    )  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    bounding = int(done.stdout.split()[-1], 16)
    # CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_SYS_ADMIN 21: exactly these.
    assert bounding == (1 << 12) | (1 << 13) | (1 << 21)
    assert not Path("/etc/nodemesh-probe").exists() and not Path("/run/nodemesh-probe").exists()
