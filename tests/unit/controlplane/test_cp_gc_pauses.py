"""Full garbage collections in the control plane's processes (controlplane.gc_pauses): after
one, the next walks only what was made since, so it pauses for a fraction of the time; and a
reference cycle among objects that survived one is still taken once the frozen objects go back."""

from __future__ import annotations

import gc
import time
import weakref

from controlplane.gc_pauses import keep_full_collections_short


class Cell:
    __slots__ = ("items", "peer", "__weakref__")

    def __init__(self) -> None:
        self.items: list[int] = []
        self.peer: Cell | None = None


def _full_collection_s() -> float:
    started = time.perf_counter()
    gc.collect()
    return time.perf_counter() - started


def test_a_full_collection_walks_only_what_was_made_since_the_last() -> None:
    now = [0.0]
    callback = keep_full_collections_short(unfreeze_s=60, clock=lambda: now[0])
    try:
        held = [Cell() for _ in range(600_000)]  # a store's worth of live objects
        first = _full_collection_s()  # walks them all, then they are frozen
        held += [Cell() for _ in range(1_000)]
        second = _full_collection_s()
        assert second < first / 3, (first, second)
        # A cycle among frozen objects, let go: taken after the frozen objects went back.
        a, b = held[0], held[1]
        a.peer, b.peer = b, a
        gone = weakref.ref(a)
        del a, b, held
        gc.collect()
        assert gone() is not None  # frozen: out of the collector's sight
        now[0] = 61.0
        gc.collect()  # the frozen objects go back after this one
        gc.collect()
        assert gone() is None
    finally:
        gc.callbacks.remove(callback)
        gc.unfreeze()
