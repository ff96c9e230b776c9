"""Shared test set-up: root-only tests are skipped with a reason off root (and fail in CI), and
every root test is checked for leaks: network namespaces, root-netns links, child processes,
files under /etc/netns and /run/nodemesh, and iptables rules in the root namespace."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Generator, Iterator

import pytest
from hypothesis import settings

from tests import leakcheck
from tests.outcome import FAILED

# Properties are checked for what they say, never against a clock: a loaded CI machine must not
# fail one on Hypothesis' 200 ms per-example deadline (speed is measured in bench/).
settings.register_profile("nodemesh", deadline=None)
settings.load_profile("nodemesh")

IS_ROOT = os.geteuid() == 0
IN_CI = os.environ.get("CI") == "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Under pytest-xdist (--dist loadgroup, scripts/test) a module runs on one worker, so its
    # module-scoped lab is made once; a module may name a group it shares instead.
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    if IS_ROOT:
        return
    for item in items:
        if item.get_closest_marker("root") or item.get_closest_marker("lab"):
            if IN_CI:
                item.add_marker(pytest.mark.xfail(reason="CI must run as root", strict=True))
            else:
                item.add_marker(pytest.mark.skip(reason="needs root (network namespaces)"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Marks a test whose set-up or body failed, for fixtures that show more on failure (a lab's
    logs: `labkit.show_lab_logs`)."""
    report = yield
    if report.failed and report.when in ("setup", "call"):
        item.stash[FAILED] = True
    return report


def _root_ruleset() -> str:
    out = []
    for cmd in (["iptables-legacy-save"], ["iptables-nft-save"]):
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        out.extend(ln for ln in res.stdout.splitlines() if not ln.startswith(("#", ":")))
    return "\n".join(out)


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a root test that leaves anything behind (CI runs tests one at a time)."""
    marked = any(request.node.get_closest_marker(m) for m in ("root", "lab"))
    if not IS_ROOT or not marked:
        yield
        return
    before = leakcheck.snapshot()
    rules_before = _root_ruleset()
    yield
    # On a shared development machine other people's namespaces come and go: set
    # NODEMESH_LEAKCHECK_ONLY to a substring your tests' names hold. CI checks everything.
    only_sub = os.environ.get("NODEMESH_LEAKCHECK_ONLY")
    only = (lambda name: only_sub in name) if only_sub else None
    leakcheck.assert_no_leaks(before, leakcheck.snapshot(), only=only)
    if not only_sub:
        assert _root_ruleset() == rules_before, "iptables rules in the root namespace changed"
