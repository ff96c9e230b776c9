"""Builds the self-contained nodemesh-cni executable: a zipapp of this stdlib-only package.

build.sh does the same from a shell; install-cni calls `build_zipapp` when it is given no
prebuilt executable, so the image only needs this package and python3.
"""

from __future__ import annotations

import compileall
import os
import py_compile
import shutil
import tempfile
import zipapp
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
INTERPRETER = "/usr/bin/env python3"
# Written as the archive's __main__.py: zipapp's own -m template drops main()'s exit status.
# A runtime runs a CNI plugin without arguments; with some (`nodemesh-cni uninstall ...` on a
# node) it is install-cni, so the node can be cleaned up with nothing but this file and python3.
MAIN = (
    "import sys\n"
    "if len(sys.argv) > 1:\n"
    "    from nodemesh_cni.install import main as install\n"
    "    sys.exit(install(sys.argv[1:]))\n"
    "from nodemesh_cni.plugin import main\n"
    "sys.exit(main())\n"
)


def build_zipapp(target: Path, *, interpreter: str = INTERPRETER) -> Path:
    """Write the executable zipapp to `target` atomically (temp file in its dir, then rename)."""
    target = Path(target)
    with tempfile.TemporaryDirectory(prefix="nodemesh-cni-build-") as staging:
        stage = Path(staging)
        shutil.copytree(PACKAGE_DIR, stage / "nodemesh_cni", ignore=_not_source)
        (stage / "__main__.py").write_text(MAIN)
        # Bytecode next to each source, unchecked-hash: zipimport cannot write a cache, and
        # compiling on every pod start would cost milliseconds. Another python3 version on the
        # node sees a foreign magic number and falls back to the sources, which are included.
        compileall.compile_dir(
            stage,
            quiet=1,
            legacy=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        fd, tmp = tempfile.mkstemp(prefix=".nodemesh-cni-", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            zipapp.create_archive(stage, tmp, interpreter=interpreter)
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    return target


def _not_source(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))]
