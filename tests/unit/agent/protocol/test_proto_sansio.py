"""The protocol package stays sans-io: no module in it imports an I/O library."""

from __future__ import annotations

import ast
from pathlib import Path

import nodeagent.protocol

FORBIDDEN = {"asyncio", "socket", "grpc", "selectors", "ssl", "uvloop", "subprocess", "threading"}
PACKAGE = Path(nodeagent.protocol.__file__).parent


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_io_imports() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) >= 8
    offenders = {p.name: imported_roots(p) & FORBIDDEN for p in modules}
    assert {name: bad for name, bad in offenders.items() if bad} == {}
