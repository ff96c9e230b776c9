"""`nodemesh routes`: golden metrics per mesh route rule (HTTPRoute/GRPCRoute), as
`linkerd viz routes` shows them, for a Service or the Services backed by a workload."""

from __future__ import annotations

import json
from typing import Any

import click

from nodemesh.api import public_pb2 as pb
from nodemesh.cli import resources, tables, window
from nodemesh.cli.publicapi import PublicApi
from nodemesh.cli.target import TargetOptions, resolve, target_options

HEADERS = ["ROUTE", "SERVICE", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]


def row_dict(row: pb.RouteRow) -> dict[str, Any]:
    def opt(field: str) -> float | None:
        return getattr(row, field) if row.HasField(field) else None

    return {
        "route": row.route,
        "kind": row.kind,
        "service": f"{row.service_namespace}/{row.service}",
        "requests": row.requests,
        "success_rate": opt("success_rate"),
        "rps": round(row.rps, 6),
        "covered_seconds": round(row.covered_seconds, 3),
        "latency_ms": {
            "p50": opt("latency_p50_ms"),
            "p95": opt("latency_p95_ms"),
            "p99": opt("latency_p99_ms"),
        },
    }


def body_of(response: pb.RoutesResponse) -> dict[str, Any]:
    return {
        "window_seconds": response.window_seconds,
        "services": list(response.services),
        "routes": [row_dict(r) for r in response.rows],
        "attached": [
            {
                "kind": a.kind,
                "route": f"{a.namespace}/{a.name}",
                "service": f"{a.service_namespace}/{a.service}",
                "port": a.port or None,
                "rules": a.rules,
            }
            for a in response.attached
        ],
        "route_errors": list(response.route_errors),
    }


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        lat = r["latency_ms"]
        out.append(
            [
                "[DEFAULT]" if r["route"] == "default" else r["route"],
                r["service"],
                tables.percent(r["success_rate"]),
                tables.rps(r["rps"], traffic=r["requests"] > 0),
                tables.millis(lat["p50"]),
                tables.millis(lat["p95"]),
                tables.millis(lat["p99"]),
            ]
        )
    return out


@click.command()
@click.argument("resource")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--from", "from_", metavar="RESOURCE", help="Only requests from this (KIND[/NAME]).")
@window.option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@target_options
def routes(
    resource: str,
    name: str | None,
    namespace: str,
    from_: str | None,
    time_window: str,
    output: str,
    target: TargetOptions,
) -> None:
    """Golden metrics per mesh route rule (HTTPRoute / GRPCRoute) of the requests to a Service.

    RESOURCE is svc/NAME, or deploy/NAME or pod/NAME for the Services whose endpoints are
    that workload's pods (`routes deploy/web`, `routes svc web`).

    \b
    ROUTE is namespace/name/rule of the route rule that took the request on
    the client's agent; [DEFAULT] counts requests to a Service on the L7
    path that no rule took (no route, or none matched). Rules with no
    requests in the window show '-'. Numbers as in `stat` (SUCCESS, RPS,
    LATENCY_*): measured by the client's agent, retries included in the
    latency of the request they belong to. The routes attached to the
    Services are listed after the table (-o json: attached).
    """
    kind, name = resources.parse(resource, name)
    if kind not in ("deployment", "service", "pod"):
        raise click.BadParameter(
            f"routes are shown for deploy, svc or pod, not {resources.SHORT.get(kind, kind)}",
            param_hint="RESOURCE",
        )
    if not name:
        raise click.BadParameter(
            f"name the {resources.SHORT.get(kind, kind)}: {resources.SHORT.get(kind, kind)}/NAME",
            param_hint="RESOURCE",
        )
    request = pb.RoutesRequest(
        resource=resources.message(kind, name, namespace),
        window_seconds=window.seconds(time_window),
    )
    src = resources.option_resource(from_, namespace, param="'--from'")
    if src:
        request.from_resource.CopyFrom(src)
    with resolve(target) as endpoint, PublicApi(endpoint) as api:
        api.check_namespace(namespace)
        response = api.routes(request)
    body = body_of(response)
    if output == "json":
        click.echo(json.dumps(body, indent=2, sort_keys=True))
        return
    if not body["services"]:
        click.echo(f"No Service has {resources.label(kind, name)}'s pods as endpoints.")
        return
    tables.echo(
        HEADERS,
        table_rows(body["routes"]),
        empty=f"No routes or L7 traffic for {', '.join(body['services'])}.",
    )
    for a in body["attached"]:
        port = f":{a['port']}" if a["port"] else ""
        rules = "1 rule" if a["rules"] == 1 else f"{a['rules']} rules"
        click.echo(f"{a['kind']} {a['route']} -> {a['service']}{port} ({rules})")
    for error in body["route_errors"]:
        click.echo(f"refused: {error}", err=True)
