"""Fixtures for nodemesh-cni: the two executables and a test agent on a unix socket."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cni_harness import BUILD_SCRIPT, VENV_PLUGIN, TestAgent


@pytest.fixture(scope="session")
def zipapp_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The self-contained executable, built by cni-plugin/build.sh into a temp dir."""
    out = tmp_path_factory.mktemp("zipapp") / "nodemesh-cni"
    subprocess.run(
        ["sh", str(BUILD_SCRIPT), str(out)],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=60,
    )
    return out


@pytest.fixture(params=["venv", "zipapp"])
def plugin(request: pytest.FixtureRequest, zipapp_plugin: Path) -> Path:
    """Each conformance test runs against the console script and against the zipapp."""
    if request.param == "venv":
        assert VENV_PLUGIN.exists(), "run `.venv/bin/pip install -e . --no-deps`"
        return VENV_PLUGIN
    return zipapp_plugin


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path is limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="nmcni-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(sock_dir: Path) -> Iterator[TestAgent]:
    server = TestAgent(sock_dir / "cni.sock")
    yield server
    server.close()
