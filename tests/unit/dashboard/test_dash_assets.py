"""Offline assets (everything a page loads is served by the dashboard), the OpenAPI document,
and the coalescing cache's failure and cancellation behaviour."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from dashboard.coalesce import Coalescer

STATIC = Path(__file__).resolve().parents[3] / "dashboard" / "static"
TEMPLATES = STATIC.parent / "templates"


async def test_every_asset_a_page_names_is_served_and_nothing_is_external(dashboard) -> None:
    page = (await dashboard.http.get("/")).text
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert {"/static/app.js", "/static/app.css", "/static/chart.js"} <= set(assets)
    for asset in assets:
        rsp = await dashboard.http.get(asset)
        assert rsp.status_code == 200, asset
    for path in [*STATIC.iterdir(), *TEMPLATES.iterdir()]:
        text = path.read_text()
        # No CDN, web font or remote script: clusters are often offline.
        external = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text)
        assert [u for u in external if "www.w3.org" not in u] == [], path.name


async def test_openapi_documents_the_json_api(dashboard) -> None:
    doc = (await dashboard.http.get("/openapi.json")).json()
    paths = set(doc["paths"])
    assert {
        "/api/overview",
        "/api/deployments",
        "/api/deployments/stream",
        "/api/namespaces/{namespace}/deployments/{name}",
        "/api/topology",
        "/api/nodes",
        "/api/tap",
        "/api/version",
    } == paths
    detail = doc["paths"]["/api/namespaces/{namespace}/deployments/{name}"]["get"]
    assert {"200", "400", "404", "503"} <= set(detail["responses"])
    # Pages are not part of the API document; Swagger UI (a CDN page) is not served.
    assert (await dashboard.http.get("/docs")).status_code == 404


async def test_coalescer_shares_one_fetch_and_forgets_failures() -> None:
    now = [0.0]
    cache = Coalescer(ttl=1.0, clock=lambda: now[0])
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return calls

    assert await asyncio.gather(*(cache.get("k", fetch) for _ in range(5))) == [1] * 5
    now[0] = 0.5
    assert await cache.get("k", fetch) == 1
    now[0] = 1.5
    assert await cache.get("k", fetch) == 2

    async def broken() -> int:
        raise RuntimeError("control plane down")

    with pytest.raises(RuntimeError):
        await cache.get("b", broken)
    assert await cache.get("b", fetch) == 3  # the failure was not kept

    # A caller that goes away does not cancel the answer the others wait for.
    now[0] = 10
    first = asyncio.ensure_future(cache.get("k", fetch))
    second = asyncio.ensure_future(cache.get("k", fetch))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == 4


async def test_coalescer_stays_bounded() -> None:
    cache = Coalescer(ttl=60, max_keys=10)

    async def fetch() -> str:
        return "x"

    for i in range(100):
        await cache.get(i, fetch)
    assert len(cache._entries) <= 10
