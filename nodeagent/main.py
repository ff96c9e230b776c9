"""nodemesh-agent: the per-node agent's entry point."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from nodeagent.agent import serve
from nodeagent.config import parse_args
from nodeagent.handover import keeper
from nodeagent.heap import limit_arenas


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    limit_arenas()
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if config.keep_sockets and keeper.ENV not in os.environ:
        # Become the keeper under its own name, so that tools looking for the agent's process
        # (ps, pgrep nodemesh-agent) find the agent, its child.
        agent = sys.argv[0] if sys.argv[0].endswith("nodemesh-agent") else "nodeagent.main"
        args = list(sys.argv[1:] if argv is None else argv)
        os.execv(sys.executable, [sys.executable, "-m", "nodeagent.handover.keeper", agent, *args])
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(config))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
