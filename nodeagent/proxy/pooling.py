"""Which shared tunnel connection a new app connection rides, and when one is retired (sans-io).

The shell (nodeagent.proxy.tunnelpool) keeps, per key (source pod, its identity, destination pod
IP and identity), the multiplexed mTLS connections it opened; it asks `pick()` for one with a free
stream, dials a new one when there is none (one dial per key at a time: the others wait for it),
and asks `retire()` which to close. The rules:
- a connection takes at most `max_streams` app connections at once (and never more than the
  peer's own limit), and new streams go to the busiest connection that has room, so few
  connections stay busy and the rest go idle and are closed;
- a connection is used only while `usable`: not told to go away by its peer (GOAWAY: an agent
  handing over), not broken, made with the source's current certificate, younger than `max_age`
  (a renewed certificate, a moved pod reach the wire within that);
- a connection with no stream for `idle_after` seconds, or unusable and empty, is retired;
- a peer that did not agree on multiplexing (an agent of an older version) is remembered for
  `legacy_for` seconds: app connections to it get one tunnel each, as before.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

MAX_STREAMS = 100
IDLE_AFTER = 30.0
MAX_AGE = 600.0
LEGACY_FOR = 60.0


@dataclass(eq=False)
class Carrier:
    """One shared tunnel connection as the pool sees it."""

    key: Hashable
    created: float
    credential: Any  # what it was made with (the source's certificate): replaced -> unusable
    conn: Any = None  # the shell's connection object
    streams: int = 0
    peer_max_streams: int = MAX_STREAMS
    idle_since: float = 0.0
    going_away: bool = False  # the peer sent GOAWAY, or we decided to retire it
    broken: bool = False  # lost, or it stopped answering

    def __post_init__(self) -> None:
        self.idle_since = self.created


@dataclass
class PoolState:
    max_streams: int = MAX_STREAMS
    idle_after: float = IDLE_AFTER
    max_age: float = MAX_AGE
    legacy_for: float = LEGACY_FOR
    carriers: dict[Hashable, list[Carrier]] = field(default_factory=dict)
    legacy_until: dict[Hashable, float] = field(default_factory=dict)

    def usable(self, c: Carrier, *, now: float, credential: Any) -> bool:
        return (
            not c.going_away
            and not c.broken
            and c.credential is credential
            and now - c.created < self.max_age
        )

    def pick(self, key: Hashable, *, now: float, credential: Any) -> Carrier | None:
        """The carrier a new stream should ride, or None: dial one."""
        best: Carrier | None = None
        for c in self.carriers.get(key, ()):
            if not self.usable(c, now=now, credential=credential):
                continue
            if c.streams >= min(self.max_streams, c.peer_max_streams):
                continue
            if best is None or c.streams > best.streams:
                best = c
        return best

    def added(self, carrier: Carrier) -> None:
        self.carriers.setdefault(carrier.key, []).append(carrier)

    def stream_opened(self, carrier: Carrier) -> None:
        carrier.streams += 1

    def stream_closed(self, carrier: Carrier, *, now: float) -> None:
        carrier.streams = max(0, carrier.streams - 1)
        if carrier.streams == 0:
            carrier.idle_since = now

    def lost(self, carrier: Carrier) -> None:
        """The connection is gone: forget it."""
        carrier.broken = True
        group = self.carriers.get(carrier.key)
        if group is not None and carrier in group:
            group.remove(carrier)
            if not group:
                del self.carriers[carrier.key]

    def retire(self, *, now: float) -> list[Carrier]:
        """Carriers to close now (idle too long, or unusable with nothing left on them); they
        are forgotten here."""
        out = []
        for c in list(self.all()):
            if c.streams:
                continue
            stale = c.going_away or c.broken or now - c.created >= self.max_age
            if stale or now - c.idle_since >= self.idle_after:
                out.append(c)
                self.lost(c)
        return out

    def all(self) -> Iterator[Carrier]:
        for group in self.carriers.values():
            yield from group

    def mark_legacy(self, peer: Hashable, *, now: float) -> None:
        self.legacy_until[peer] = now + self.legacy_for

    def is_legacy(self, peer: Hashable, *, now: float) -> bool:
        until = self.legacy_until.get(peer)
        if until is None:
            return False
        if now >= until:
            del self.legacy_until[peer]
            return False
        return True
