"""`-t/--time-window` values: 30s, 1m, 90, 15m; the store keeps 10 s to 15 minutes."""

from __future__ import annotations

import re

import click

MIN_SECONDS, MAX_SECONDS = 10, 900
_WINDOW = re.compile(r"^(\d+)([sm]?)$")


def seconds(text: str) -> int:
    m = _WINDOW.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration like 30s or 1m", param_hint="'-t'")
    value = int(m[1]) * (60 if m[2] == "m" else 1)
    if not MIN_SECONDS <= value <= MAX_SECONDS:
        raise click.BadParameter(
            f"{text} is outside 10s-15m (the control plane keeps 15 minutes)", param_hint="'-t'"
        )
    return value


def option(f):  # type: ignore[no-untyped-def]
    return click.option(
        "-t",
        "--time-window",
        "time_window",
        default="1m",
        show_default=True,
        help="How far back to look: 10s to 15m.",
    )(f)
