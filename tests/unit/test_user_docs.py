"""The user documentation keeps up with the code: every nodemesh.io/ label or annotation the code
names is documented in docs/annotations.md (with its values where the code has a fixed set), and
the README's opening commands run in a root shell that has no sudo."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from nodemesh.model import InboundMode

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("controlplane", "nodeagent", "nodemesh", "cni-plugin", "dashboard")
KEY = re.compile(r"^(?:[a-z0-9-]+\.)*nodemesh\.io/[a-z0-9][a-z0-9.-]*$")


def keys_in_code() -> dict[str, list[str]]:
    """Every string constant that *is* a nodemesh.io/ key, with the files that hold it."""
    found: dict[str, list[str]] = {}
    for top in CODE_DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if KEY.match(node.value):
                        found.setdefault(node.value, []).append(str(path.relative_to(ROOT)))
    return found


def documented() -> str:
    return (ROOT / "docs" / "annotations.md").read_text()


def test_the_scan_finds_the_keys_the_index_and_agent_read() -> None:
    keys = keys_in_code()
    # If these are not found, the scan is broken, not the docs complete.
    assert {"nodemesh.io/mesh", "nodemesh.io/opaque-ports", "nodemesh.io/inbound-mode"} <= set(keys)


def test_every_label_and_annotation_in_the_code_is_documented() -> None:
    doc = documented()
    missing = {k: where for k, where in keys_in_code().items() if f"`{k}`" not in doc}
    assert missing == {}, f"document these in docs/annotations.md: {missing}"


def test_the_docs_name_no_key_the_code_does_not_know() -> None:
    doc_keys = set(re.findall(r"`((?:[a-z0-9-]+\.)*nodemesh\.io/[a-z0-9.-]+)`", documented()))
    assert doc_keys - set(keys_in_code()) == set()


def test_fixed_values_are_documented() -> None:
    doc = documented()
    for value in [m.value for m in InboundMode] + ["enabled", "disabled"]:
        assert f"`{value}`" in doc, value


def test_readme_opens_with_two_commands_a_root_shell_without_sudo_can_run() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    commands = [c for c in commands if c]
    assert commands == ["./scripts/demo", "./scripts/test"]
    for command in commands:
        script = ROOT / command
        assert os.access(script, os.X_OK), f"{script} is not executable"
        # A fresh Debian root shell has no sudo: neither the scripts nor what they run use it.
        assert not re.search(r"^\s*[^#\n]*\bsudo\b", script.read_text(), re.M), script
    assert not re.search(r"^\s*[^#\n]*\bsudo\b", (ROOT / "scripts/bootstrap").read_text(), re.M)
