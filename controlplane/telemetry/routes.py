"""Per-route golden metrics from the store (pure functions): what `nodemesh routes` shows.

Only the series the clients' L7 path reported with a `route` ("namespace/name/rule", or
"default" when a request took no route rule) count here, grouped by the Service the client
called and the route; stat leaves those series out (the relay observes the same requests).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from controlplane.telemetry.query import (
    Resource,
    StatRow,
    _in_window,
    _matches,
    _name_of,
    _window,
)
from controlplane.telemetry.store import TelemetryStore


@dataclass
class RouteRow(StatRow):
    """A StatRow of one route of one Service (kind "service", namespace/name the Service)."""

    route: str = ""


def route_stats(
    store: TelemetryStore,
    *,
    services: Collection[tuple[str, str]] | None,
    source: Resource | None = None,
    window_s: float = 60,
    include_current: bool = True,
) -> list[RouteRow]:
    """Rows for requests to `services` ((namespace, name); None: any) sent by `source` (None:
    any client), one per (Service, route) that had requests in the window."""
    first, last, seconds = _window(store, window_s, include_current)
    rows: dict[tuple[str, str, str], RouteRow] = {}
    for key, cells in store.request_series.items():
        if not key.route or key.direction != "outbound":
            continue
        service = (key.dst.namespace, key.dst.service)
        if services is not None and service not in services:
            continue
        if source is not None and not _matches(source, _name_of(source.kind, key.src)):
            continue
        ident = (*service, key.route)
        for cell in _in_window(cells, first, last):
            r = rows.get(ident)
            if r is None:
                r = rows[ident] = RouteRow(
                    "service", service[0], service[1], seconds, route=key.route
                )
            if key.success:
                r.success += cell.responses
            else:
                r.failure += cell.responses
            cell.latency_into(r.latency)
    return [rows[k] for k in sorted(rows)]
