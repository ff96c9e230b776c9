"""`nodemesh edges`: who talks to whom, and whether mTLS secured it."""

from __future__ import annotations

import json
from typing import Any

import click

from nodemesh.api import public_pb2 as pb
from nodemesh.cli import resources, tables, window
from nodemesh.cli.publicapi import PublicApi
from nodemesh.cli.target import TargetOptions, resolve, target_options

HEADERS = ["SRC", "DST", "SRC_NS", "DST_NS", "SECURED"]
WIDE = ["CLIENT_ID", "SERVER_ID"]


def edge_dict(e: pb.Edge) -> dict[str, Any]:
    return {
        "src": {"kind": e.src.kind, "namespace": e.src.namespace, "name": e.src.name},
        "dst": {"kind": e.dst.kind, "namespace": e.dst.namespace, "name": e.dst.name},
        "client_id": e.src_identity,
        "server_id": e.dst_identity,
        "secured": e.tls,
        "requests": e.requests,
        "tcp_connections": e.tcp_connections,
    }


def table_rows(edges: list[dict[str, Any]], *, wide: bool) -> list[list[str]]:
    out = []
    for e in edges:
        cells = [
            e["src"]["name"],
            e["dst"]["name"],
            e["src"]["namespace"] or "-",
            e["dst"]["namespace"] or "-",
            "yes" if e["secured"] else "no",
        ]
        if wide:
            cells += [e["client_id"] or "-", e["server_id"] or "-"]
        out.append(cells)
    return out


@click.command()
@click.argument("resource", default="deploy")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-A", "--all-namespaces", is_flag=True)
@window.option
@click.option("-o", "--output", type=click.Choice(["table", "wide", "json"]), default="table")
@target_options
def edges(
    resource: str,
    namespace: str,
    all_namespaces: bool,
    time_window: str,
    output: str,
    target: TargetOptions,
) -> None:
    """Connections between deployments (or pods) and their mTLS identities.

    RESOURCE is deploy (the default) or pod.
    """
    kind, name = resources.parse(resource)
    if kind not in ("deployment", "pod") or name:
        raise click.BadParameter("edges are shown for deploy or pod", param_hint="RESOURCE")
    seconds = window.seconds(time_window)
    with resolve(target) as endpoint, PublicApi(endpoint) as api:
        if not all_namespaces:
            api.check_namespace(namespace)
        response = api.edges(
            pb.EdgesRequest(
                kind=kind,
                namespace=namespace,
                all_namespaces=all_namespaces,
                window_seconds=seconds,
            )
        )
    found = sorted(
        (edge_dict(e) for e in response.edges),
        key=lambda e: (
            e["src"]["namespace"],
            e["src"]["name"],
            e["dst"]["namespace"],
            e["dst"]["name"],
        ),
    )
    if output == "json":
        click.echo(json.dumps({"edges": found}, indent=2, sort_keys=True))
        return
    scope = "" if all_namespaces else f" in {namespace!r}"
    tables.echo(
        HEADERS + (WIDE if output == "wide" else []),
        table_rows(found, wide=output == "wide"),
        empty=f"No edges found{scope}.",
    )
