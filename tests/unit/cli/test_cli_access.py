"""The CLI's credentials: it sends a token, and says clearly when the control plane does not
know the caller, or knows them and refuses; hostile tap values get the API's own message."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli_errors import assert_one_line_error

from nodemesh.cli.cluster import api_client
from nodemesh.cli.target import TargetOptions, kubeconfig_token


@pytest.mark.parametrize(
    "args", [["stat", "deploy", "-n", "emojivoto"], ["tap", "deploy/web", "-n", "emojivoto", "--duration", "1"],
             ["edges", "deploy", "-n", "emojivoto"], ["version"]],
)  # fmt: skip
def test_without_a_token_the_cli_says_who_it_is_not(run, api_server, args) -> None:
    api_server.load_world()
    res = run(*args, token="")
    assert_one_line_error(res, 1, "does not know who you are", "NODEMESH_API_TOKEN")


def test_a_token_without_the_permission_is_refused_by_name(run, api_server) -> None:
    api_server.load_world()
    api_server.add_user("carol-token", "carol")
    res = run("tap", "deploy/web", "-n", "emojivoto", "--duration", "1", token="carol-token")
    assert_one_line_error(
        res, 1, "refused", "'carol' may not watch deployments/tap", "nodemesh-tap"
    )
    res = run("stat", "deploy", "-n", "emojivoto", token="carol-token")
    assert_one_line_error(res, 1, "'carol' may not list deployments.stats.nodemesh.io")


def test_hostile_tap_rates_get_the_apis_message(run, api_server) -> None:
    # click's range check lets NaN through (every comparison with it is false); the API does not.
    api_server.load_world()
    res = run("tap", "deploy/web", "-n", "emojivoto", "--max-rps", "nan", "--duration", "1")
    assert_one_line_error(res, 1, "max_rps must be a finite number, not nan")
    assert api_server.broker.streams == {}


def test_the_kubeconfig_users_token_is_the_one_sent(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n"
        "users: [{name: u, user: {token: user-token-123}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    api = api_client(TargetOptions(kubeconfig=str(kubeconfig)))
    try:
        assert kubeconfig_token(api) == "user-token-123"
    finally:
        api.close()
