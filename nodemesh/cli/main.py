"""The `nodemesh` command: entry point and top-level commands."""

from __future__ import annotations

import sys

import click

from nodemesh.cli.check import check
from nodemesh.cli.edges import edges
from nodemesh.cli.info import dashboard, version
from nodemesh.cli.install.command import install, uninstall
from nodemesh.cli.lab import lab
from nodemesh.cli.mesh import mesh
from nodemesh.cli.migrate import migrate
from nodemesh.cli.routes import routes
from nodemesh.cli.stat import stat
from nodemesh.cli.tap import tap
from nodemesh.cli.top import top


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """nodemesh: a service mesh for Kubernetes with one proxy per node.

    Try it locally, as root: `nodemesh lab up --demo`, then `nodemesh check` and
    `nodemesh stat deploy -n emojivoto`.
    """


for command in (install, uninstall, check, stat, top, tap, edges, dashboard, version, mesh, lab):
    cli.add_command(command)
cli.add_command(routes)
cli.add_command(migrate)


def main() -> None:
    try:
        cli(prog_name="nodemesh")
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
