"""`nodemesh stat`: golden metrics per deployment, pod, namespace, service or node."""

from __future__ import annotations

import json
from typing import Any

import click

from nodemesh.api import public_pb2 as pb
from nodemesh.cli import resources, tables, window
from nodemesh.cli.publicapi import ApiError, PublicApi
from nodemesh.cli.target import TargetOptions, resolve, target_options

HEADERS = [
    "NAME",
    "MESHED",
    "SUCCESS",
    "RPS",
    "LATENCY_P50",
    "LATENCY_P95",
    "LATENCY_P99",
    "TCP_CONN",
]
WIDE = ["READ_BYTES/SEC", "WRITE_BYTES/SEC"]
NODE = ["AGENT", "ENROLLED", "AGENT_CONN", "CPU_TIME", "MEMORY"]


def row_dict(row: pb.StatRow, *, window_s: int) -> dict[str, Any]:
    def opt(field: str) -> float | None:
        return getattr(row, field) if row.HasField(field) else None

    seconds = float(row.covered_seconds or window_s)

    return {
        "kind": row.resource.kind,
        "namespace": row.resource.namespace,
        "name": row.resource.name,
        "meshed_pods": row.meshed_pods,
        "total_pods": row.total_pods,
        "requests": row.requests,
        "success_rate": opt("success_rate"),
        "rps": round(row.rps, 6),
        "covered_seconds": round(seconds, 3),
        "latency_ms": {
            "p50": opt("latency_p50_ms"),
            "p95": opt("latency_p95_ms"),
            "p99": opt("latency_p99_ms"),
        },
        "tcp_open_connections": row.tcp_open_connections,
        "read_bytes_per_second": round(row.tcp_read_bytes / seconds, 3),
        "write_bytes_per_second": round(row.tcp_write_bytes / seconds, 3),
        "authz_denied": row.authz_denied,
    }


def agent_dict(node: pb.NodeStatus | None) -> dict[str, Any]:
    if node is None:
        return {"connected": False}
    return {
        "connected": node.agent_connected,
        "version": node.agent_version,
        "last_report_unix_ms": node.last_report_unix_ms,
        "pods_enrolled": node.pods_enrolled,
        "open_connections": node.open_connections,
        "cpu_seconds": node.cpu_seconds,
        "rss_bytes": node.rss_bytes,
    }


def table_rows(
    rows: list[dict[str, Any]], *, wide: bool, namespaced: bool, denials: bool = False
) -> list[list[str]]:
    out = []
    for r in rows:
        traffic = bool(r["requests"] or r["tcp_open_connections"] or r["read_bytes_per_second"])
        lat = r["latency_ms"]
        cells = [
            r["name"],
            f"{r['meshed_pods']}/{r['total_pods']}",
            tables.percent(r["success_rate"]),
            tables.rps(r["rps"], traffic=r["requests"] > 0),
            tables.millis(lat["p50"]),
            tables.millis(lat["p95"]),
            tables.millis(lat["p99"]),
            str(r["tcp_open_connections"]) if traffic else "-",
        ]
        if namespaced:
            cells.insert(0, r["namespace"])
        if denials:
            cells.append(str(r["authz_denied"]))
        if wide:
            cells += [
                tables.byte_size(r["read_bytes_per_second"], suffix="/s") if traffic else "-",
                tables.byte_size(r["write_bytes_per_second"], suffix="/s") if traffic else "-",
            ]
        if "agent" in r:
            a = r["agent"]
            reported = bool(a.get("last_report_unix_ms"))
            cells += [
                "up" if a["connected"] else "down",
                str(a["pods_enrolled"]) if reported else "-",
                str(a["open_connections"]) if reported else "-",
                f"{a['cpu_seconds']:.1f}s" if reported else "-",
                tables.byte_size(a["rss_bytes"]) if reported else "-",
            ]
        out.append(cells)
    return out


def headers(kind: str, *, wide: bool, denials: bool = False) -> list[str]:
    out = list(HEADERS)
    if kind not in resources.CLUSTER_SCOPED:
        out.insert(0, "NAMESPACE")
    if denials:
        out.append("AUTHZ_DENIED")
    if wide:
        out += WIDE
    if kind == "node":
        out += NODE
    return out


@click.command()
@click.argument("resource")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-A", "--all-namespaces", is_flag=True, help="Every namespace.")
@click.option("--from", "from_", metavar="RESOURCE", help="Only traffic from this (KIND[/NAME]).")
@click.option("--to", metavar="RESOURCE", help="Only traffic to this (KIND[/NAME]).")
@window.option
@click.option("-o", "--output", type=click.Choice(["table", "wide", "json"]), default="table")
@target_options
def stat(
    resource: str,
    name: str | None,
    namespace: str,
    all_namespaces: bool,
    from_: str | None,
    to: str | None,
    time_window: str,
    output: str,
    target: TargetOptions,
) -> None:
    """Golden metrics: success rate, requests per second, latency, TCP connections.

    RESOURCE is deploy, pod, ns, svc or node, optionally with a name (`deploy web` or
    `deploy/web`). Node rows add the node agent's own load.

    \b
    The window (-t) is rounded up to whole 10 s buckets and includes the
    running one, so requests count about a second after they finish; it
    covers between the asked time and 10 s more (-o json: covered_seconds).
    RPS: responses completed in the window divided by the seconds it
    covers, an average (a 10 s burst at 300 rps shows as about 100 rps with
    -t 30s).
    SUCCESS: the share of those responses that succeeded (not 5xx, not a
    gRPC error). LATENCY_P50/P95/P99: response latency quantiles.
    TCP_CONN: connections open now, as the agents last reported them
    (each reports every second; silent for 10-20 s counts as none).
    AUTHZ_DENIED (shown when any row has some): requests and connections
    the destination's authorization policy denied in the window.
    """
    kind, name = resources.parse(resource, name)
    seconds = window.seconds(time_window)
    if from_ and to:
        raise click.UsageError("--from and --to cannot be combined")
    request = pb.StatRequest(
        resource=resources.message(kind, name, namespace),
        all_namespaces=all_namespaces,
        window_seconds=seconds,
    )
    src = resources.option_resource(from_, namespace, param="'--from'")
    dst = resources.option_resource(to, namespace, param="'--to'")
    if src:
        request.from_resource.CopyFrom(src)
    if dst:
        request.to_resource.CopyFrom(dst)
    with resolve(target) as endpoint, PublicApi(endpoint) as api:
        if kind not in resources.CLUSTER_SCOPED and not all_namespaces:
            api.check_namespace(namespace)
        if kind == "namespace" and name:
            api.check_namespace(name)
        response = api.stat(request)
        nodes = {n.name: n for n in api.nodes().nodes} if kind == "node" else {}
    rows = [row_dict(r, window_s=response.window_seconds or seconds) for r in response.rows]
    for r in rows:
        if kind == "node":
            r["agent"] = agent_dict(nodes.get(r["name"]))
    if name and not rows:
        where = "" if kind in resources.CLUSTER_SCOPED else f" in namespace {namespace!r}"
        raise ApiError(f"no {resources.SHORT[kind]} named {name!r}{where}")
    if output == "json":
        body = {"window_seconds": response.window_seconds, "rows": rows}
        click.echo(json.dumps(body, indent=2, sort_keys=True))
        return
    scope = "" if kind in resources.CLUSTER_SCOPED or all_namespaces else f" in {namespace!r}"
    namespaced = kind not in resources.CLUSTER_SCOPED
    denials = any(r["authz_denied"] for r in rows)
    tables.echo(
        headers(kind, wide=output == "wide", denials=denials),
        table_rows(rows, wide=output == "wide", namespaced=namespaced, denials=denials),
        empty=f"No {kind}s found{scope}.",
    )
