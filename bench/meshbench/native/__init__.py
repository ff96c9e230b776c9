"""The C load generator and HTTP server, compiled with gcc at run time into a work folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = {"loadgen": HERE / "loadgen.c", "server": HERE / "server.c"}


class BuildError(RuntimeError):
    pass


def build(into: Path) -> dict[str, Path]:
    """Compile both programs into `into`; name -> executable."""
    into.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, src in SOURCES.items():
        exe = into / name
        res = subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(exe), str(src)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if res.returncode != 0:
            raise BuildError(f"gcc {src.name}:\n{res.stderr}")
        exe.chmod(0o755)
        out[name] = exe
    return out
