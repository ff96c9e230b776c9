"""`nodemesh version` and `nodemesh dashboard`."""

from __future__ import annotations

import contextlib
import os
import time
import webbrowser
from collections.abc import Iterator

import click

from nodemesh import ports
from nodemesh.cli.portforward import LocalForward, netns_opener
from nodemesh.cli.publicapi import PublicApi
from nodemesh.cli.target import (
    Endpoint,
    TargetError,
    TargetOptions,
    lab_status,
    resolve,
    target_options,
)
from nodemesh.version import __version__

DASHBOARD_SERVICE = "nodemesh-dashboard"


@click.command()
@click.option("--client", is_flag=True, help="Print only the client version.")
@target_options
def version(client: bool, target: TargetOptions) -> None:
    """Print the client and control plane versions."""
    click.echo(f"Client version: {__version__}")
    if client:
        return
    with resolve(target) as endpoint, PublicApi(endpoint) as api:
        v = api.version()
    synced = "" if v.synced else ", not in sync with the cluster: see nodemesh check"
    click.echo(f"Server version: {v.version} ({endpoint.where}, source {v.source}{synced})")


@contextlib.contextmanager
def _dashboard_url(endpoint: Endpoint, target: TargetOptions, port: int) -> Iterator[str]:
    if endpoint.lab is not None:
        status = lab_status(endpoint.lab)
        for f in status["forwards"]:
            if f["service"] == DASHBOARD_SERVICE and f["namespace"] == "nodemesh":
                yield f"http://{f['host']}:{f['local_port']}/"
                return
        svc = next(
            (
                s
                for s in status["services"]
                if (s["namespace"], s["name"]) == ("nodemesh", DASHBOARD_SERVICE)
            ),
            None,
        )
        if svc is None:
            raise TargetError(
                f"{endpoint.where} runs no dashboard (no Service {DASHBOARD_SERVICE})"
            )
        # Lab nodes route the Service range, so relay into a node's netns to the ClusterIP.
        netns = endpoint.lab.node_netns(status["nodes"][0]["name"])
        fwd = LocalForward(netns_opener(netns, svc["clusterIP"], ports.DASHBOARD), port=port)
    elif endpoint.kube is not None:
        from nodemesh.cli.cluster import port_forward

        with port_forward(
            endpoint.kube,
            namespace=target.nodemesh_namespace,
            component="dashboard",
            port=ports.DASHBOARD,
            local_port=port,
        ) as address:
            yield f"http://{address}/"
        return
    else:
        raise TargetError("with --api-addr the dashboard's address is not known: open it yourself")
    try:
        yield f"http://{fwd.address}/"
    finally:
        fwd.close()


@click.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Local port of the forward (0: any free port).",
)
@click.option("--show-url", is_flag=True, help="Only print the URL, do not open a browser.")
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Keep the forward this long (default: until Ctrl-C).",
)
@target_options
def dashboard(port: int, show_url: bool, wait: float | None, target: TargetOptions) -> None:
    """Open the dashboard: forwards a local port to it while this command runs."""
    try:
        with resolve(target) as endpoint, _dashboard_url(endpoint, target, port) as url:
            click.echo(f"nodemesh dashboard: {url}")
            if not show_url and os.environ.get("DISPLAY"):
                webbrowser.open(url)
            click.echo("(Ctrl-C to stop the forward)" if wait is None else "", nl=wait is None)
            deadline = None if wait is None else time.monotonic() + wait
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
    except KeyboardInterrupt:
        pass
