"""The `nodemesh` command: entry point and top-level commands."""

from __future__ import annotations

import sys

import click

from nodemesh.cli.lab import lab
from nodemesh.version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """nodemesh: a service mesh for Kubernetes with one proxy per node.

    Try it locally, as root: `nodemesh lab up --demo`.
    """


@cli.command()
@click.option("--client", is_flag=True, help="Print only the client version.")
def version(client: bool) -> None:
    """Print the client and control plane versions."""
    click.echo(f"Client version: {__version__}")
    if not client:
        # The public API (and so the server version) arrives with the control plane.
        click.echo("Server version: unavailable (no control plane reachable)")


cli.add_command(lab)


def main() -> None:
    try:
        cli(prog_name="nodemesh")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
