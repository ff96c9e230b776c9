"""The dashboard calls the public API as its own ServiceAccount: with its token it shows the
mesh; without one the control plane refuses it and the pages say so, showing no data."""

from __future__ import annotations

import pytest


async def test_with_its_token_the_dashboard_shows_the_mesh(dashboard) -> None:
    resp = await dashboard.http.get("/api/deployments", params={"namespace": "emojivoto"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["deployments"]


@pytest.mark.parametrize("dashboard", [{"token_file": "/nonexistent/token"}], indirect=True)
async def test_without_a_token_the_control_plane_refuses_and_the_page_says_so(dashboard) -> None:
    resp = await dashboard.http.get("/api/deployments", params={"namespace": "emojivoto"})
    assert resp.status_code == 503
    assert "UNAUTHENTICATED" in resp.json()["error"]
    assert "web" not in resp.text
