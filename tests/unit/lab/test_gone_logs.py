"""A deleted pod's logs stay readable (the latest GONE_LOGS_KEPT pods') until the lab goes."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest

from nodemesh.lab import pods
from nodemesh.lab.paths import LabPaths


@pytest.fixture
def paths() -> Iterator[LabPaths]:
    p = LabPaths("zzgone" + uuid.uuid4().hex[:6])
    try:
        yield p
    finally:
        shutil.rmtree(p.root, ignore_errors=True)


def _write_log(paths: LabPaths, pod: str, text: str) -> None:
    d = paths.logs("shop", pod)
    d.mkdir(parents=True)
    (d / "api.log").write_text(text)


def test_deleted_pods_logs_are_kept_newest_first_within_the_bound(
    paths: LabPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pods, "GONE_LOGS_KEPT", 2)
    for i in range(3):
        _write_log(paths, f"api-{i}", f"500: pod {i} said why\n")
        pods._keep_gone_logs(paths, "shop", f"api-{i}")
        assert not paths.logs("shop", f"api-{i}").exists()
    kept = sorted(p.name for p in (paths.gone_logs / "shop").iterdir())
    assert kept == ["api-1", "api-2"]
    assert (paths.gone_logs / "shop" / "api-2" / "api.log").read_text() == "500: pod 2 said why\n"


def test_a_pod_stopped_after_lab_down_makes_no_lab_directory_again(paths: LabPaths) -> None:
    _write_log(paths, "api-0", "late\n")
    shutil.rmtree(paths.root)  # `lab down` removed the lab while the pod was still stopping
    pods._keep_gone_logs(paths, "shop", "api-0")
    assert not paths.root.exists()
