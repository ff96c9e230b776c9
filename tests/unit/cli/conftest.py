"""Fixtures of the CLI tests: the public API server and the `nodemesh` command against it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from cli_server import ApiServer
from click.testing import CliRunner, Result

from nodemesh.cli.main import cli


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    server = ApiServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def run(api_server: ApiServer) -> Callable[..., Result]:
    """`run("stat", "deploy", ...)`: the real `nodemesh` command against the server."""

    def invoke(*args: str, token: str | None = None) -> Result:
        env = {
            "NODEMESH_API_ADDR": api_server.address,
            "NODEMESH_LAB": "",
            "NODEMESH_API_TOKEN": api_server.admin_token if token is None else token,
        }
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    return invoke
