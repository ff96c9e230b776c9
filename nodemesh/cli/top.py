"""`nodemesh top`: a live table of the busiest routes (source, destination, method, path) from
tap events, redrawn every second; with --duration or without a terminal, printed once at the end."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import click

from nodemesh.api import tap_pb2
from nodemesh.cli import resources, tables
from nodemesh.cli.publicapi import ApiError, PublicApi
from nodemesh.cli.tap import tap_options, tap_request
from nodemesh.cli.target import TargetOptions, resolve, target_options

HEADERS = [
    "SOURCE",
    "DESTINATION",
    "METHOD",
    "PATH",
    "COUNT",
    "BEST",
    "WORST",
    "LAST",
    "SUCCESS_RATE",
]
Route = tuple[str, str, str, str]


def peer_name(p: tap_pb2.TapPeer) -> str:
    if p.workload:
        return f"{resources.short_kind(p.workload_kind)}/{p.workload}"
    if p.pod:
        return f"pod/{p.pod}"
    return p.ip or "-"


@dataclass
class RouteStats:
    count: int = 0
    successes: int = 0
    best_us: int = 0
    worst_us: int = 0
    last_us: int = 0


@dataclass
class Aggregate:
    """Folds req/rsp/end events into per-route counts; a request counts once it ends."""

    routes: dict[Route, RouteStats] = field(default_factory=dict)
    pending: dict[tuple[str, int], tuple[Route, int]] = field(default_factory=dict)

    def add(self, ev: tap_pb2.TapEvent) -> None:
        key = (ev.node, ev.request_id)
        kind = ev.WhichOneof("kind")
        if kind == "req":
            route = (peer_name(ev.src), peer_name(ev.dst), ev.req.method, ev.req.path)
            self.pending[key] = (route, 0)
            if len(self.pending) > 10_000:  # requests whose end never came
                self.pending.pop(next(iter(self.pending)))
        elif kind == "rsp" and key in self.pending:
            self.pending[key] = (self.pending[key][0], ev.rsp.status)
        elif kind == "end" and key in self.pending:
            route, status = self.pending.pop(key)
            e = ev.end
            ok = (
                not e.error
                and status < 500
                and (not e.HasField("grpc_status") or e.grpc_status == 0)
            )
            s = self.routes.setdefault(route, RouteStats())
            us = e.since_request_us
            s.best_us = us if s.count == 0 else min(s.best_us, us)
            s.worst_us = max(s.worst_us, us)
            s.last_us = us
            s.count += 1
            s.successes += ok

    def sorted(self) -> list[tuple[Route, RouteStats]]:
        return sorted(self.routes.items(), key=lambda kv: (-kv[1].count, kv[0]))

    def rows(self) -> list[list[str]]:
        return [
            [
                *route,
                str(s.count),
                tables.micros(s.best_us),
                tables.micros(s.worst_us),
                tables.micros(s.last_us),
                tables.percent(s.successes / s.count),
            ]
            for route, s in self.sorted()
        ]

    def as_json(self) -> list[dict[str, Any]]:
        return [
            {
                "source": r[0],
                "destination": r[1],
                "method": r[2],
                "path": r[3],
                "count": s.count,
                "successes": s.successes,
                "best_us": s.best_us,
                "worst_us": s.worst_us,
                "last_us": s.last_us,
            }
            for r, s in self.sorted()
        ]


def _reader(api: PublicApi, request: Any, seconds: float | None, out: queue.Queue[Any]) -> None:
    try:
        for ev in api.tap_for(request, seconds=seconds):
            out.put(ev)
    except ApiError as e:
        out.put(e)
    out.put(None)


@click.command()
@tap_options
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@target_options
def top(
    resource: str,
    namespace: str,
    to: str | None,
    method: str,
    path: str,
    max_rps: float,
    duration: float | None,
    output: str,
    target: TargetOptions,
) -> None:
    """Busiest routes of RESOURCE, live: counts, best/worst/last latency, success rate."""
    request = tap_request(
        resource, namespace=namespace, to=to, method=method, path=path, max_rps=max_rps
    )
    live = duration is None and sys.stdout.isatty() and output == "table"
    agg = Aggregate()
    with resolve(target) as endpoint, PublicApi(endpoint, timeout=duration or 10.0) as api:
        if request.resource.kind not in resources.CLUSTER_SCOPED:
            api.check_namespace(namespace)
        events: queue.Queue[Any] = queue.Queue(maxsize=10_000)
        reader = threading.Thread(
            target=_reader, args=(api, request, duration, events), daemon=True
        )
        reader.start()
        next_draw = time.monotonic()
        try:
            while True:
                try:
                    item = events.get(timeout=0.2)
                except queue.Empty:
                    item = ...
                if item is None:
                    break
                if isinstance(item, ApiError):
                    raise item
                if item is not ...:
                    agg.add(item)
                if live and time.monotonic() >= next_draw:
                    _draw(agg, resource)
                    next_draw = time.monotonic() + 1.0
        except KeyboardInterrupt:
            pass
    if output == "json":
        click.echo(json.dumps({"routes": agg.as_json()}, indent=2, sort_keys=True))
    elif not live:
        tables.echo(HEADERS, agg.rows(), empty="No requests seen.")


def _draw(agg: Aggregate, resource: str) -> None:
    click.echo("\x1b[H\x1b[2J", nl=False)
    click.echo(f"nodemesh top {resource}   (Ctrl-C to quit)\n")
    tables.echo(HEADERS, agg.rows(), empty="(waiting for requests)")
