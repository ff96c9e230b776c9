"""Every image builds from its Dockerfile (scripts/build-images: mmdebstrap + buildah, no Docker
engine, no registry) and each image's own entrypoint runs inside it. The Dockerfiles had never
been built: the build stage lacked the compiler python-iptables needs, so none of them could."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from nodemesh.cli.main import cli
from nodemesh.version import __version__

ROOT = Path(__file__).resolve().parents[2]
IMAGES = sorted(p.name.removesuffix(".Dockerfile") for p in (ROOT / "images").glob("*.Dockerfile"))
# What the agent runs besides Python (nodeagent/rules, nodeagent/proxy/podnetns: rules in pod netns).
AGENT_TOOLS = (
    "iptables-legacy-restore", "iptables-legacy-save", "ip6tables-legacy-restore",
    "ip6tables-legacy-save", "nsenter", "ip",
)  # fmt: skip

pytestmark = [
    pytest.mark.root,
    pytest.mark.host_network,  # mmdebstrap fetches Debian packages
    pytest.mark.timeout(1500),  # the first test waits for every image to build
    pytest.mark.skipif(
        shutil.which("buildah") is None, reason="buildah missing (scripts/bootstrap)"
    ),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("images")
    done = subprocess.run(
        [str(ROOT / "scripts/build-images"), "--store", str(path)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    try:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield path
    finally:
        for args in (["rm", "--all"], ["rmi", "--all", "--force"]):
            subprocess.run(_buildah(path, *args), capture_output=True, timeout=300)
        # containers/storage leaves its overlay home bind-mounted (and a failed build may leave
        # layers mounted): unmount everything below the store, deepest first, then remove it.
        for target in sorted(_mounts_below(path), reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=60)
        shutil.rmtree(path, ignore_errors=True)
        assert not _mounts_below(path), "mounts left below the image store"


def _mounts_below(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        targets = [line.split()[4] for line in f]
    return [t for t in targets if t == str(path) or t.startswith(f"{path}/")]


def _buildah(store: Path, *args: str) -> list[str]:
    return ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run"),
            "--storage-driver", "overlay", *args]  # fmt: skip


def _run_in(store: Path, image: str, argv: list[str], env: dict[str, str] | None = None) -> str:
    ctr = subprocess.run(
        _buildah(store, "from", "--pull-never", image), capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        envs = [f"--env={k}={v}" for k, v in (env or {}).items()]
        done = subprocess.run(
            _buildah(store, "run", "--isolation", "chroot", *envs, ctr, "--", *argv),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, f"{image}: {argv}: {done.stdout}{done.stderr}"
        return done.stdout
    finally:
        subprocess.run(_buildah(store, "rm", ctr), capture_output=True, timeout=60)


def _config(store: Path, image: str) -> dict[str, object]:
    out = subprocess.run(
        _buildah(store, "inspect", "--type", "image", image), capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    return json.loads(out)["OCIv1"]["config"]  # type: ignore[no-any-return]


def test_every_image_the_manifests_name_is_built(store: Path) -> None:
    out = subprocess.run(_buildah(store, "images", "--format", "{{.Name}}:{{.Tag}}"),
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    rendered = CliRunner().invoke(cli, ["install"]).output
    named = {
        c["image"]
        for d in yaml.safe_load_all(rendered) if d and d["kind"] in ("Deployment", "DaemonSet")
        for c in d["spec"]["template"]["spec"].get("initContainers", [])
        + d["spec"]["template"]["spec"]["containers"]
    }  # fmt: skip
    assert named and named <= set(out), f"rendered {named}, built {out}"


@pytest.mark.parametrize("name", IMAGES)
def test_the_image_runs_its_own_entrypoint(store: Path, name: str) -> None:
    image = f"ghcr.io/nodemesh/{name}:{__version__}"
    config = _config(store, image)
    command = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]  # type: ignore[misc]
    assert command, f"{image} has no command"
    # The image's own command, asked for its usage: the program is there and imports cleanly.
    usage = _run_in(store, image, [*command, "--help"])
    assert "usage" in usage.lower()
    if name == "agent":
        _run_in(store, image, ["python3", "-m", "nodemesh_cni.install", "--help"])
        version = _run_in(
            store, image, ["/opt/nodemesh/nodemesh-cni"], env={"CNI_COMMAND": "VERSION"}
        )
        assert "1.1.0" in json.loads(version)["supportedVersions"]
        for tool in AGENT_TOOLS:
            _run_in(store, image, ["sh", "-c", f"command -v {tool}"])
