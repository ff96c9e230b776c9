"""Short pauses for Python's full garbage collections in the control plane's processes.

A full (generation 2) collection walks every object that can hold references. At 10,000 pods
the telemetry worker holds millions of them (the store's cells and aggregates) and the control
plane's process hundreds of thousands (the index, 1,000 agent streams): a full collection paused
the worker for 0.17-0.88 s and the event loop for 0.22-0.25 s, every few seconds while Stat was
asked (its builds allocate enough to start them), and every Stat waiting on either waited that
long (bench/results/controlplane-scale.md, seventh round).

`keep_full_collections_short()`: after each full collection, the objects that survived it are
moved out of the collector's sight (`gc.freeze`): they were alive just then, and the next full
collection walks only what was made since (milliseconds). An object frozen while alive that
later becomes garbage is still freed by its reference count; only one that ends up in a
reference cycle waits: every `UNFREEZE_SECONDS` the frozen objects go back (`gc.unfreeze`), so
the next full collection walks everything once and takes such cycles. The store's own cycles
(a connection series and the aggregates' cells that list it) are broken by the store as its
buckets age, before they are let go.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

UNFREEZE_SECONDS = 600.0


def keep_full_collections_short(
    *, unfreeze_s: float = UNFREEZE_SECONDS, clock: Callable[[], float] = time.monotonic
) -> Callable[[str, dict[str, Any]], None]:
    """Install the collector callback (once per process); returns it (to remove it)."""
    unfrozen = [clock()]

    def after_collection(phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        now = clock()
        if now - unfrozen[0] >= unfreeze_s:
            gc.unfreeze()  # the next full collection walks everything
            unfrozen[0] = now
        else:
            gc.freeze()

    gc.callbacks.append(after_collection)
    return after_collection
