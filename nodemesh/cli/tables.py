"""Plain-text tables and the number formats the observing commands share."""

from __future__ import annotations

from collections.abc import Sequence

import click

GAP = "   "


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns left-aligned, three spaces apart, trailing spaces trimmed (like kubectl)."""
    table = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    return "\n".join(
        GAP.join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table
    )


def echo(headers: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str) -> None:
    if not rows:
        click.echo(empty)
        return
    click.echo(render(headers, rows))


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.2f}%"


def rps(value: float, *, traffic: bool) -> str:
    return f"{value:.1f}rps" if traffic else "-"


def millis(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"


def micros(us: int) -> str:
    return millis(us / 1000.0)


def byte_size(n: float, *, suffix: str = "") -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}{suffix}" if unit == "B" else f"{n:.1f}{unit}{suffix}"
        n /= 1024
    raise AssertionError("unreachable")
