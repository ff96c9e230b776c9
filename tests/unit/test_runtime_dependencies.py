"""Every module the shipped packages import comes from the standard library, from nodemesh
itself, or from a declared runtime dependency (or what one of those requires): the images
install only those. The L7 path once imported `h2` and the control plane `httpx`, both then dev
dependencies only: every test passed in the virtualenv and the agent image failed to start."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("nodeagent", "controlplane", "nodemesh", "dashboard", "ingress")
FIRST_PARTY = {*SHIPPED, "nodemesh_cni"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _installable() -> set[str]:
    """The declared runtime dependencies and, transitively, what they require (extras aside)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [_name(r) for r in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        try:
            requires = md.requires(dist) or []
        except md.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_every_import_of_the_shipped_packages_is_installed_by_the_images() -> None:
    installable = _installable()
    owners = md.packages_distributions()
    missing: dict[str, str] = {}
    for package in SHIPPED:
        for path in sorted((ROOT / package).rglob("*.py")):
            for top in _imports(path) - FIRST_PARTY - set(sys.stdlib_module_names):
                dists = {_name(d) for d in owners.get(top, [])}
                if not dists & installable:
                    missing.setdefault(top, str(path.relative_to(ROOT)))
    assert not missing, f"imported but not a runtime dependency (pyproject.toml): {missing}"
