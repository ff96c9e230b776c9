"""The plugin's log: lines to stderr and to a log file, never to stdout (stdout is the runtime's).

Deliberately not the `logging` package: it costs several milliseconds to import and the plugin
runs once per pod attachment. Each line is written with one write(2) on an O_APPEND file, so the
lines of plugins running in parallel for different pods do not interleave.
"""

from __future__ import annotations

import os
import sys
import time

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40
_NAMES = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error"}
# The file is moved aside to <file>.1 past this size; one old generation is kept.
MAX_LOG_BYTES = 10 * 1024 * 1024


class PluginLog:
    """Writes level-filtered lines, prefixed with the command and container, to stderr + file."""

    def __init__(self, *, level: int = INFO, prefix: str = "") -> None:
        self.level = level
        self.prefix = prefix
        self._fd: int | None = None

    def open_file(self, path: str) -> None:
        """Also append to `path`; a file that cannot be opened is reported on stderr only."""
        if not path:
            return
        try:
            if os.path.getsize(path) > MAX_LOG_BYTES:
                os.replace(path, path + ".1")
        except OSError:
            pass  # absent (first run) or already rotated by a parallel plugin
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            self.warning(f"cannot open log file {path}: {exc.strerror}")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def log(self, level: int, message: str) -> None:
        if level < self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        line = (
            f"{stamp}.{int(now * 1000) % 1000:03d}Z {_NAMES.get(level, level)} "
            f"nodemesh-cni[{os.getpid()}] {self.prefix}{message}\n"
        ).encode("utf-8", "replace")
        try:
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()
        except (OSError, ValueError, AttributeError):
            pass  # a closed stderr must not turn a successful ADD into a failure
        if self._fd is not None:
            try:
                os.write(self._fd, line)
            except OSError:
                pass

    def debug(self, message: str) -> None:
        self.log(DEBUG, message)

    def info(self, message: str) -> None:
        self.log(INFO, message)

    def warning(self, message: str) -> None:
        self.log(WARNING, message)

    def error(self, message: str) -> None:
        self.log(ERROR, message)
