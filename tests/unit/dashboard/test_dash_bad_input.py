"""Every route answers bad input with a clear 4xx (JSON under /api, a page elsewhere), never a
500; a control plane that does not answer is a 503 that says so."""

from __future__ import annotations

import asyncio
import logging
import socket
from urllib.parse import quote

import httpx
import pytest
from dash_cluster import NS
from dash_serve import serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard.app import create_app

API_CASES = [
    # (path, params, status, words the message must hold)
    ("/api/deployments", {"namespace": "nope"}, 404, "namespace 'nope' does not exist"),
    ("/api/deployments", {"namespace": "Bad_NS"}, 400, "not a valid namespace"),
    ("/api/deployments", {"window": "5"}, 400, "window"),
    ("/api/deployments", {"window": "abc"}, 400, "window"),
    ("/api/deployments", {"window": "901"}, 400, "window"),
    ("/api/deployments/stream", {"namespace": "nope"}, 404, "does not exist"),
    ("/api/deployments/stream", {"interval": "0"}, 400, "interval"),
    ("/api/overview", {"window": "-1"}, 400, "window"),
    (f"/api/namespaces/{NS}/deployments/nope", {}, 404, "deployment 'nope' does not exist"),
    ("/api/namespaces/nope/deployments/web", {}, 404, "namespace 'nope'"),
    (f"/api/namespaces/{NS}/deployments/UPPER", {}, 400, "not a valid Kubernetes object name"),
    (f"/api/namespaces/{NS}/deployments/web", {"window": "1e9"}, 400, "window"),
    ("/api/topology", {"namespace": "nope"}, 404, "does not exist"),
    ("/api/topology", {"namespace": "x" * 64}, 400, "namespace"),
    ("/api/tap", {}, 400, "resource"),
    ("/api/tap", {"resource": "web"}, 400, "write kind/name"),
    ("/api/tap", {"resource": "cronjob/x", "namespace": NS}, 400, "kind must be one of"),
    ("/api/tap", {"resource": "deploy/nope", "namespace": NS}, 404, "deploy 'nope' does not"),
    ("/api/tap", {"resource": "deploy/web", "namespace": "nope"}, 404, "namespace 'nope'"),
    ("/api/tap", {"resource": "deploy/web", "namespace": NS, "to": "svc/nope"}, 404, "svc"),
    ("/api/tap", {"resource": "deploy/web", "namespace": NS, "method": "G E T"}, 400, "method"),
    ("/api/tap", {"resource": "deploy/web", "namespace": NS, "path": "api"}, 400, "path prefix"),
    ("/api/tap", {"resource": "deploy/web", "namespace": NS, "max_rps": "0"}, 400, "max_rps"),
    ("/api/tap", {"resource": "deploy/web", "namespace": NS, "max_rps": "nan"}, 400, "max_rps"),
    ("/api/tap", {"resource": "deploy/web", "namespace": NS, "max_rps": "1000"}, 400, "max_rps"),
    ("/api/nothing-here", {}, 404, "Not Found"),
]


@pytest.mark.parametrize("path,params,status,words", API_CASES)
async def test_api_bad_input_is_a_clear_json_4xx(dashboard, path, params, status, words) -> None:
    rsp = await dashboard.http.get(path, params=params)
    assert rsp.status_code == status, rsp.text
    assert rsp.headers["content-type"] == "application/json"
    body = rsp.json()
    assert body["status"] == status
    assert words in body["error"]


PAGE_CASES = [
    ("/deployments?namespace=nope", 404, "namespace &#x27;nope&#x27; does not exist"),
    ("/deployments?namespace=%3Cscript%3E", 400, "&#x27;&lt;script&gt;&#x27; is not a valid"),
    (f"/namespaces/{NS}/deployments/nope", 404, "deployment &#x27;nope&#x27; does not exist"),
    ("/namespaces/nope/deployments/web", 404, "namespace &#x27;nope&#x27;"),
    ("/topology?namespace=nope", 404, "does not exist"),
    ("/topology?window=3", 400, "window"),
    ("/tap?max_rps=-3", 400, "max_rps"),
    ("/no/such/page", 404, "Not Found"),
]


@pytest.mark.parametrize("path,status,words", PAGE_CASES)
async def test_page_bad_input_is_a_clear_html_4xx(dashboard, path, status, words) -> None:
    rsp = await dashboard.http.get(path)
    assert rsp.status_code == status
    assert rsp.headers["content-type"].startswith("text/html")
    assert words in rsp.text
    assert "<script>" not in rsp.text.split('<script src="/static/app.js">')[0]


_ROUTES = [
    "/api/deployments",
    "/api/deployments/stream",
    "/api/overview",
    "/api/topology",
    "/api/tap",
    "/deployments",
    "/topology",
    "/tap",
    "/",
]
_PARAMS = ["namespace", "window", "resource", "to", "method", "path", "max_rps", "interval"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    route=st.sampled_from(_ROUTES),
    params=st.dictionaries(st.sampled_from(_PARAMS), st.text(max_size=40), max_size=4),
)
async def test_no_route_answers_500_to_any_query(dashboard, route, params) -> None:
    # A stream route that accepts the input would stream forever: read only its status.
    async with dashboard.http.stream("GET", route, params=params) as rsp:
        assert rsp.status_code < 500, (route, params, rsp.status_code)


@given(segment=st.text(min_size=1, max_size=70).filter(lambda s: s not in (".", "..")))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
async def test_no_deployment_path_answers_500(dashboard, segment) -> None:
    for path in (f"/api/namespaces/{NS}/deployments/", f"/namespaces/{NS}/deployments/"):
        rsp = await dashboard.http.get(path + quote(segment, safe=""))
        assert rsp.status_code < 500, (path, segment)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_control_plane_down_is_a_503_that_says_so() -> None:
    app = create_app(f"127.0.0.1:{_closed_port()}", sample_period=60)
    server, task, url = await serve(app)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            rsp = await http.get("/api/deployments")
            assert rsp.status_code == 503
            assert "control plane did not answer" in rsp.json()["error"]
            page = await http.get("/deployments?namespace=emojivoto")
            assert page.status_code == 503 and "control plane did not answer" in page.text
            # The pages that only need the shell still load, and say what is wrong when polled.
            assert (await http.get("/")).status_code == 200
    finally:
        server.should_exit = True
        await task


async def test_control_plane_not_up_yet_is_said_once_and_retried_quietly(caplog) -> None:
    caplog.set_level(logging.INFO)
    app = create_app(f"127.0.0.1:{_closed_port()}", sample_period=0.2)
    server, task, url = await serve(app)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            for _ in range(3):
                assert (await http.get("/api/deployments")).status_code == 503
            await asyncio.sleep(1.5)  # several history samples, all failing
    finally:
        server.should_exit = True
        await task
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in loud if r.levelno >= logging.ERROR or r.exc_info], [
        r.getMessage() for r in loud
    ]
    assert len(loud) == 1 and "control plane" in loud[0].getMessage(), [
        r.getMessage() for r in loud
    ]
