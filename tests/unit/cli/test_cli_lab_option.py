"""Every command that picks a lab spells the option --lab (the lab's own subcommands too, where
--name stays accepted as the older spelling)."""

from __future__ import annotations

import os

import click
import pytest
from click.testing import CliRunner

from nodemesh.cli.main import cli


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        path = f"{prefix} {name}".strip()
        if isinstance(cmd, click.Group):
            out += _commands(cmd, path)
        else:
            out.append((path, cmd))
    return out


def _opts(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts}


def test_every_command_that_takes_a_lab_name_takes_it_as_lab() -> None:
    takes_a_lab = [(path, _opts(cmd)) for path, cmd in _commands(cli)]
    lab_ones = [(path, opts) for path, opts in takes_a_lab if {"--lab", "--name"} & opts]
    assert len(lab_ones) >= 10  # the lab's seven subcommands and the public-API commands
    assert [path for path, opts in lab_ones if "--lab" not in opts] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="the lab's commands are root's")
@pytest.mark.parametrize("spelling", ["--lab", "--name"])
def test_lab_subcommands_find_the_lab_by_either_spelling(spelling: str) -> None:
    res = CliRunner().invoke(cli, ["lab", "status", spelling, "kopsnolab"])
    assert res.exit_code != 0
    assert "no lab named 'kopsnolab'" in res.output, res.output
