"""Micro benchmark: what watching one HTTP/1 keep-alive exchange costs the agent, in a hot loop.

    .venv/bin/python bench/obs_tap.py [--exchanges 20000] [--rounds 7]

Feeds bench/parsers.py's keep-alive exchange (POST with a 1 KiB body, 200 with a 1 KiB body)
through a ConnectionTap wired to the agent's real AgentSink, as the relay does for every chunk,
and prints microseconds per exchange: the observer alone, the whole tap (detection already
settled, events, classification, aggregation), and the two sides of observing once (the
client's tap reporting each exchange for the server too; the server's tap parsing nothing).
Inside an agent at 1000 rps the same work costs 3.5-4x what this shows
(bench/results/observe-cost/README.md); nothing is asserted: it is a measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import parsers  # noqa: E402

from nodeagent.observe.events import Peer  # noqa: E402
from nodeagent.observe.sink import AgentSink  # noqa: E402
from nodeagent.protocol.detect import ServerFirstMemory  # noqa: E402
from nodeagent.protocol.http1 import Http1Observer  # noqa: E402
from nodeagent.proxy.l7relay import ConnectionTap  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exchanges", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args()
    wire, _ = parsers.http1_keepalive(1)
    request, response = wire[0][1], wire[1][1]

    observer = Http1Observer()

    def observe() -> None:
        observer.feed_client(request)
        observer.feed_server(response)

    loop = asyncio.new_event_loop()
    web = Peer("10.244.1.5", "emojivoto", "web-1", "Deployment", "web")
    voting = Peer("10.244.2.7", "emojivoto", "voting-1", "Deployment", "voting")

    def tap(**kw: Any) -> Callable[[], None]:
        t = ConnectionTap(
            sink=AgentSink(node="node1"),
            conn_id=1,
            src=web,
            tls=True,
            skip_detection=False,
            memory=ServerFirstMemory(),
            call_later=loop.call_later,
            detect_timeout=1.0,
            **kw,
        )

        def watch() -> None:
            t.client(request)
            t.server(response)

        watch()  # settles detection
        return watch

    outbound = dict(
        direction="outbound",
        dst=Peer("10.244.2.7", "emojivoto", "voting-1", "Deployment", "voting", "voting-svc"),
        dst_key=("10.96.0.20", 80),
        on_first_byte=lambda seconds: None,
    )
    inbound = dict(direction="inbound", dst=voting, dst_key=("10.244.2.7", 80))
    rows = (
        ("Http1Observer alone", observe),
        ("ConnectionTap + AgentSink", tap(**outbound)),
        # Observe once (both ends meshed): the client's agent reports for the server's too...
        ("  the same, also for the server", tap(**outbound, for_peer=voting)),
        # ... and the server's agent relays without parsing.
        ("  the server's, parsing nothing", tap(**inbound, parse=False)),
    )
    for name, fn in rows:
        best = min(timeit.repeat(fn, number=args.exchanges, repeat=args.rounds))
        print(f"{name:34s} {best / args.exchanges * 1e6:6.1f} us per exchange")
    loop.close()


if __name__ == "__main__":
    main()
