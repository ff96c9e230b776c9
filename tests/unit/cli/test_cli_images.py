"""The image Dockerfiles: they parse, every COPY source exists in this checkout, the commands
they run are the project's own entry points, and the install manifests use these images."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[3]
IMAGES = sorted((REPO / "images").glob("*.Dockerfile"))
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _instructions(path: Path) -> list[dict]:
    with path.open("rb") as f:
        found = DockerfileParser(fileobj=f).structure
    return [i for i in found if i["instruction"] != "COMMENT"]


def test_there_is_an_image_per_component() -> None:
    assert {p.name for p in IMAGES} == {
        "agent.Dockerfile", "controlplane.Dockerfile", "dashboard.Dockerfile"}  # fmt: skip


@pytest.mark.parametrize("dockerfile", IMAGES, ids=[p.stem for p in IMAGES])
def test_copy_sources_exist_and_commands_are_ours(dockerfile: Path) -> None:
    found = _instructions(dockerfile)
    assert found[0]["instruction"] == "FROM"
    copies = 0
    for ins in found:
        if ins["instruction"] in ("COPY", "ADD"):
            words = shlex.split(ins["value"])
            if any(w.startswith("--from=") for w in words):
                continue
            *sources, _dest = [w for w in words if not w.startswith("--")]
            for src in sources:
                assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src}: not in the checkout"
                copies += 1
        if ins["instruction"] == "CMD":
            exe = shlex.split(ins["value"].strip("[]").replace(",", " "))[0]
            assert exe in SCRIPTS, f"{dockerfile.name}: CMD {exe} is not a project script"
    assert copies >= 3
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored


def test_install_renders_these_images() -> None:
    from nodemesh.cli.install.identity import generate
    from nodemesh.cli.install.render import objects
    from nodemesh.cli.install.values import InstallValues

    images = {
        c["image"].split("/")[-1].split(":")[0]
        for o in objects(InstallValues(), generate(trust_domain="cluster.local"))
        if o["kind"] in ("Deployment", "DaemonSet")
        for c in o["spec"]["template"]["spec"]["containers"]
        if "nodemesh" in c["image"]
    }
    assert images == {p.name.removesuffix(".Dockerfile") for p in IMAGES}
