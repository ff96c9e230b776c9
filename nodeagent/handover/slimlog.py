"""A logger for the small blocking processes of the hand-over (the socket keeper, the socket
park's link) that does not import `logging`.

`logging` (with threading, traceback, string and their imports) costs the keeper ~0.65 MB of
RSS, and the keeper runs beside every agent (issue 17). `Log` writes the same line format as
the agent's logging config (`asctime levelname name: message`) to stderr. In a process where
`logging` is loaded already (the agent, which uses KeeperLink, the park's own process, tests),
it hands each record to `logging.getLogger(name)` instead, so levels, handlers and caplog
work there as before.
"""

from __future__ import annotations

import sys
import time

INFO, WARNING = 20, 30
_NAMES = {INFO: "INFO", WARNING: "WARNING"}


class Log:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def info(self, msg: str, *args: object) -> None:
        self._emit(INFO, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._emit(WARNING, msg, args)

    def _emit(self, level: int, msg: str, args: tuple[object, ...]) -> None:
        logging = sys.modules.get("logging")
        if logging is not None:
            logging.getLogger(self.name).log(level, msg, *args)
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        text = msg % args if args else msg
        millis = int(now * 1000) % 1000
        sys.stderr.write(f"{stamp},{millis:03d} {_NAMES[level]} {self.name}: {text}\n")
