"""The one exception type every parser in nodeagent.protocol raises on malformed input."""

from __future__ import annotations

from collections.abc import Sequence


class ProtocolError(Exception):
    """Input that the parser cannot make sense of.

    The caller reacts by relaying the rest of the connection opaquely or by closing it; it
    never needs to catch anything else from this package. ``events`` holds whatever the
    parser decoded from the same call before it hit the problem, so nothing observed is lost.
    """

    def __init__(self, reason: str, *, events: Sequence[object] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.events: list[object] = list(events)
