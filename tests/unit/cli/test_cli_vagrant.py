"""The Vagrantfile is valid Ruby and its provisioning scripts valid bash; both name only files
that exist in this checkout."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
VAGRANTFILE = REPO / "Vagrantfile"


@pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed (apt: ruby)")
def test_vagrantfile_ruby_syntax() -> None:
    res = subprocess.run(["ruby", "-c", str(VAGRANTFILE)], capture_output=True, text=True)
    assert res.returncode == 0 and "Syntax OK" in res.stdout, res.stderr


def test_provisioning_scripts_exist_and_parse() -> None:
    text = VAGRANTFILE.read_text()
    scripts = re.findall(r'path: "(vagrant/[\w.-]+)"', text)
    scripts += re.findall(r"/nodemesh/(vagrant/[\w.-]+)", text)
    assert {"vagrant/node.sh", "vagrant/images.sh", "vagrant/control-plane.sh",
            "vagrant/worker.sh", "vagrant/mesh.sh"} <= set(scripts)  # fmt: skip
    for script in set(scripts):
        path = REPO / script
        assert path.exists(), script
        res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert res.returncode == 0, f"{script}: {res.stderr}"


def test_scripts_use_files_of_this_checkout() -> None:
    for script in (REPO / "vagrant").glob("*.sh"):
        for ref in re.findall(r"/nodemesh/([\w./-]+\.(?:yml|sh|Dockerfile))", script.read_text()):
            assert (REPO / ref).exists(), f"{script.name}: {ref}"
        for ref in re.findall(r"(images/\$\{image\}\.Dockerfile)", script.read_text()):
            for image in ("agent", "controlplane", "dashboard"):
                assert (REPO / ref.replace("${image}", image)).exists()
    mesh = (REPO / "vagrant" / "mesh.sh").read_text()
    assert "nodemesh install" in mesh and "kubectl apply -f -" in mesh
    assert "manifests/examples/emojivoto.yml" in mesh
