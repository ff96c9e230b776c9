"""Files nodemesh keeps in the node's run dir (beside the agent's CNI socket).

Shared by three programs that never talk to each other directly:

- `meshed-namespaces.json`, written by the agent from what the control plane told it: the
  namespaces whose pods must be enrolled. The plugin reads it only when the agent does not
  answer, to fail closed for those pods and let every other pod start.
- `uninstalling`, written by install-cni when nodemesh leaves the node: the agent then takes its
  redirect rules out of every running pod, and removes the flag to say it is done.

Standard library only (the plugin runs on the node with the node's python3).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

MESHED_FILE = "meshed-namespaces.json"
UNINSTALL_FLAG = "uninstalling"
FORMAT_VERSION = 1


class RunFileError(Exception):
    """A run-dir file exists but cannot be used; the message names it and why."""


def run_dir_of(agent_socket: str | Path) -> Path:
    return Path(agent_socket).parent


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- meshed namespaces ------------------------------------------------------------------------


def render_meshed(namespaces: set[str] | frozenset[str], *, node: str) -> bytes:
    doc = {"version": FORMAT_VERSION, "node": node, "namespaces": sorted(namespaces)}
    return json.dumps(doc, indent=1).encode() + b"\n"


def read_meshed(path: Path) -> frozenset[str] | None:
    """The meshed namespaces recorded at `path`; None when there is no such file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RunFileError(f"{path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise RunFileError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise RunFileError(f"{path}: unknown format (expected version {FORMAT_VERSION})")
    names = doc.get("namespaces")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RunFileError(f"{path}: namespaces must be a list of strings")
    return frozenset(names)


# --- the uninstall flag -----------------------------------------------------------------------


def raise_uninstall_flag(run_dir: Path, *, reason: str) -> Path:
    path = Path(run_dir) / UNINSTALL_FLAG
    doc = {"reason": reason, "time": time.time(), "pid": os.getpid()}
    write_atomically(path, json.dumps(doc).encode() + b"\n", mode=0o600)
    return path


def uninstall_flag_time(run_dir: Path) -> float | None:
    """When the flag was raised (its own record, else its mtime); None without a flag."""
    path = Path(run_dir) / UNINSTALL_FLAG
    try:
        data = path.read_bytes()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        when = json.loads(data).get("time")
    except (ValueError, AttributeError):
        when = None
    return float(when) if isinstance(when, (int, float)) else mtime
