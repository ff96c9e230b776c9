"""What a meshed pod's connection may do when the agent is unsure (sans-io): hold, then refuse;
never downgrade to plaintext.

With no table at all (a fresh agent that has neither reached the control plane nor found a
saved table) no destination can be told meshed or not, so every connection is held until a
table arrives and refused (reset) if none does within the hold. Once a table exists, a
destination it does not know is not meshed and goes plain as the app asked. A meshed
destination is only ever reached through the mTLS tunnel: without a source identity to present
the connection is refused, not sent in the clear.
"""

from __future__ import annotations

from enum import Enum

# How long a connection is held for the first table (a restarting agent reaching the control
# plane takes well under a second; a client's own connect timeout is usually longer than this).
HOLD_FOR_TABLE = 5.0
# What a connection refused that way is told (and the error its metrics and tap carry).
NO_TABLE = "no destination table yet (control plane unreachable, nothing saved): refused"


class Wait(Enum):
    PROCEED = "proceed"  # a table is there: route from it
    HOLD = "hold"  # none yet: wait a little longer
    REFUSE = "refuse"  # none came in time (or the client left): reset, never plaintext


class Upstream(Enum):
    TUNNEL = "tunnel"
    PLAIN = "plain"
    REFUSE = "refuse"


def table_wait(
    *, synced: bool, held_for: float, client_gone: bool = False, limit: float = HOLD_FOR_TABLE
) -> Wait:
    if synced:
        return Wait.PROCEED
    if client_gone or held_for >= limit:
        return Wait.REFUSE
    return Wait.HOLD


def upstream(*, meshed: bool, source_identity: str, mtls: bool) -> Upstream:
    """How to reach a target: `mtls` False means the agent runs without a trust anchor at all
    (an operator's choice for bring-up), the only case where a meshed target goes plain."""
    if not meshed or not mtls:
        return Upstream.PLAIN
    if not source_identity:
        return Upstream.REFUSE
    return Upstream.TUNNEL
