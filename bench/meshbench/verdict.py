"""When a difference between two paths may be called a result: per-round validity (the load
generator's own lag, the direct path's own noise) and a verdict on an "added" figure that never
reads "met" from noise or from a negative difference.

Pure functions over the per-round summaries the run keeps (`rounds` of each cell: a list of
{"p50_ms", "p99_ms", "lag_p99_ms"} dicts, one per interleaved turn).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

# A turn whose generator woke more than this late (p99) measured the machine, not the path.
LAG_P99_LIMIT_MS = 1.0
# A direct turn whose p99 is above NOISE_FACTOR x the median direct p99 of its cell (and at least
# NOISE_FLOOR_MS above it) caught a burst of outside load.
NOISE_FACTOR = 3.0
NOISE_FLOOR_MS = 1.0
# Fewer valid turns than this and a cell has no verdict.
MIN_VALID_ROUNDS = 2


def invalid_reason(turn: dict[str, Any], *, direct_median_p99: float | None) -> str | None:
    """Why one turn (a direct turn, or a proxied turn's load generator) cannot be used."""
    lag = turn.get("lag_p99_ms")
    if lag is not None and lag > LAG_P99_LIMIT_MS:
        return f"load generator lag p99 {lag:.3g} ms > {LAG_P99_LIMIT_MS} ms"
    p99 = turn.get("p99_ms")
    if direct_median_p99 is not None and p99 is not None and turn.get("path") == "direct":
        bound = max(NOISE_FACTOR * direct_median_p99, direct_median_p99 + NOISE_FLOOR_MS)
        if p99 > bound:
            return f"direct p99 {p99:.3g} ms > {bound:.3g} ms (noise burst)"
    return None


def median_p99(turns: list[dict[str, Any]]) -> float | None:
    values = [t["p99_ms"] for t in turns if t.get("p99_ms") is not None]
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class Added:
    """An added figure (path minus direct, turn by turn): its median over the valid turns, its
    spread (half the range of those turns), and how many turns were valid of how many run."""

    median: float | None
    spread: float | None
    valid: int
    total: int
    dropped: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median, "spread_ms": self.spread, "valid_rounds": self.valid,
                "rounds": self.total, "dropped": list(self.dropped)}  # fmt: skip


def added(path_turns: list[dict[str, Any]], direct_turns: list[dict[str, Any]], key: str) -> Added:
    """Turn i of the path against turn i of direct (they ran back to back): each valid pair's
    difference in `key`, then their median and spread."""
    dmed = median_p99(direct_turns)
    diffs: list[float] = []
    dropped: list[str] = []
    for i, (p, d) in enumerate(zip(path_turns, direct_turns, strict=False)):
        why = invalid_reason({**d, "path": "direct"}, direct_median_p99=dmed) or invalid_reason(
            p, direct_median_p99=None
        )
        if why is None and (p.get(key) is None or d.get(key) is None):
            why = "no figure"
        if why:
            dropped.append(f"round {i + 1}: {why}")
            continue
        diffs.append(p[key] - d[key])
    total = min(len(path_turns), len(direct_turns))
    if not diffs:
        return Added(None, None, 0, total, tuple(dropped))
    spread = (max(diffs) - min(diffs)) / 2
    return Added(round(statistics.median(diffs), 4), round(spread, 4), len(diffs), total,
                 tuple(dropped))  # fmt: skip


def judge(a: Added, limit: float) -> tuple[bool | None, str]:
    """Verdict on "added <= limit": True only when the whole noise band lies under the limit and the
    difference is not negative beyond its own noise; None (with the reason) when the run cannot
    say; False only when the whole band lies over the limit or it is clearly over."""
    if a.median is None or a.valid < MIN_VALID_ROUNDS:
        reasons = "; ".join(a.dropped) or "no rounds"
        return None, f"invalid: {a.valid} of {a.total} rounds usable ({reasons})"
    spread = a.spread or 0.0
    if a.median < 0:
        return None, f"invalid: negative added {a.median:.3g} ms (direct slower: noise)"
    if spread > limit:
        return None, f"noise: spread +-{spread:.3g} ms is larger than the goal {limit} ms"
    if a.median + spread <= limit:
        return True, ""
    if a.median - spread > limit:
        return False, ""
    return (False if a.median > limit else None), (
        f"within noise: {a.median:.3g} +- {spread:.3g} ms around the goal {limit} ms"
    )


def ratio(
    path_turns: list[dict[str, Any]], ref_turns: list[dict[str, Any]],
    direct_turns: list[dict[str, Any]], key: str,
) -> Added:  # fmt: skip
    """Turn i of the path over turn i of the reference proxy (HAProxy), over the turns whose
    load generator kept up and whose direct turn was quiet: median and spread of the ratios."""
    dmed = median_p99(direct_turns)
    values: list[float] = []
    dropped: list[str] = []
    n = min(len(path_turns), len(ref_turns), len(direct_turns))
    for i in range(n):
        p, r, d = path_turns[i], ref_turns[i], direct_turns[i]
        why = (invalid_reason({**d, "path": "direct"}, direct_median_p99=dmed)
               or invalid_reason(p, direct_median_p99=None)
               or invalid_reason(r, direct_median_p99=None))  # fmt: skip
        if why is None and not (p.get(key) and r.get(key)):
            why = "no figure"
        if why:
            dropped.append(f"round {i + 1}: {why}")
            continue
        values.append(p[key] / r[key])
    if not values:
        return Added(None, None, 0, n, tuple(dropped))
    return Added(round(statistics.median(values), 3),
                 round((max(values) - min(values)) / 2, 3), len(values), n,
                 tuple(dropped))  # fmt: skip


def judge_ratio(a: Added, limit: float) -> tuple[bool | None, str]:
    """Verdict on "ratio <= limit", on the same terms as `judge` (no verdict from too few
    usable turns; met only with the whole spread under the limit)."""
    if a.median is None or a.valid < MIN_VALID_ROUNDS:
        reasons = "; ".join(a.dropped) or "no rounds"
        return None, f"invalid: {a.valid} of {a.total} rounds usable ({reasons})"
    spread = a.spread or 0.0
    if a.median + spread <= limit:
        return True, ""
    if a.median > limit:
        return False, ""
    return None, f"within noise: {a.median:.3g} +- {spread:.3g} around {limit}"
