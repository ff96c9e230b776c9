"""Every page in a real headless Chromium against the dashboard and a real public API fed with
emojivoto-shaped traffic (no lab needed): live table, charts, topology, tap, nodes, errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_pages import console_errors, external_requests, table, wait_js
from browser_stack import LocalStack

pytestmark = pytest.mark.browser


@pytest.fixture
def stack() -> Iterator[LocalStack]:
    s = LocalStack()
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_deployments_table_updates_live(stack: LocalStack, browser: Any, artifacts: Path) -> None:
    stack.traffic_step()
    browser.get(f"{stack.url}/deployments?namespace=emojivoto")
    wait_js(browser, "document.querySelector('#deployments tr[data-deployment]')")
    rows = {r["Deployment"]: r for r in table(browser, "deployments")}
    assert set(rows) == {"web", "emoji", "voting", "vote-bot", "web-api"}
    assert rows["voting"]["Success"] == "90.00%"
    assert rows["voting"]["Requests"] == "60"
    first_updates = int(
        browser.execute_script("return document.querySelector('#deployments').dataset.updates")
    )
    browser.save_screenshot(str(artifacts / "deployments-1.png"))

    # More traffic, all of it failing for voting: the open page shows it without a reload.
    stack.traffic_step(voting_failures=60)
    wait_js(
        browser,
        'document.querySelector(\'#deployments tr[data-deployment="emojivoto/voting"] '
        "td[data-col=requests]').textContent === '120'",
        what="voting's requests to reach 120",
    )
    rows = {r["Deployment"]: r for r in table(browser, "deployments")}
    assert rows["voting"]["Success"] == "45.00%"
    updates = int(
        browser.execute_script("return document.querySelector('#deployments').dataset.updates")
    )
    assert updates > first_updates
    assert browser.execute_script("return location.pathname") == "/deployments"  # no reload
    browser.save_screenshot(str(artifacts / "deployments-2.png"))
    assert external_requests(browser, stack.url) == []
    assert console_errors(browser) == []


def test_deployment_page_draws_charts_and_edges(
    stack: LocalStack, browser: Any, artifacts: Path
) -> None:
    for _ in range(3):
        stack.traffic_step()
        time.sleep(1.1)  # one history sample per step (1 s period in the stack)
    browser.get(f"{stack.url}/namespaces/emojivoto/deployments/web")
    points = wait_js(
        browser,
        "document.querySelector('#chart-rps path.line')?.dataset.points >= 3 && "
        "document.querySelector('#chart-rps path.line').dataset.points",
        what="the RPS chart with 3 points",
    )
    assert int(points) >= 3
    for chart in ("chart-success", "chart-latency"):
        assert (
            browser.execute_script(f"return document.querySelectorAll('#{chart} path.line').length")
            >= 1
        )
    assert (
        browser.execute_script(
            "return document.querySelectorAll('#chart-latency path.line').length"
        )
        == 3
    )
    outbound = {r["To"]: r for r in table(browser, "outbound")}
    assert set(outbound) == {"emojivoto/emoji", "emojivoto/voting"}
    assert (
        outbound["emojivoto/voting"]["Server identity"]
        == "spiffe://cluster.local/ns/emojivoto/sa/voting"
    )
    assert outbound["emojivoto/voting"]["mTLS"] == "yes"
    assert outbound["emojivoto/voting"]["Success"] == "90.00%"
    inbound = {r["From"]: r for r in table(browser, "inbound")}
    assert set(inbound) == {"emojivoto/vote-bot"}
    pods = [r["Pod"] for r in table(browser, "pods")]
    assert sorted(pods) == ["web-5d8f7-p0xyz", "web-5d8f7-p1xyz"]
    assert "node1, node2" in browser.find_element("id", "nodes-of").text
    browser.save_screenshot(str(artifacts / "deployment-web.png"))
    assert console_errors(browser) == []


def test_deployment_page_has_route_rows(stack: LocalStack, browser: Any, artifacts: Path) -> None:
    stack.route_step()
    browser.get(f"{stack.url}/namespaces/emojivoto/deployments/web")
    wait_js(browser, "document.querySelector('#routes tr[data-route]')", what="route rows")
    rows = {r["Route"]: r for r in table(browser, "routes")}
    assert set(rows) == {"emojivoto/web-api/0", "emojivoto/web-api/1", "[DEFAULT]"}
    api = rows["emojivoto/web-api/0"]
    assert api["Service"] == "emojivoto/web-svc" and api["Success"] == "90.00%"
    assert api["P99"] not in ("-", "\u2013") and rows["[DEFAULT]"]["Success"] == "100.00%"
    assert rows["emojivoto/web-api/1"]["RPS"] == "\u2013"  # NM.dash: no requests on that rule
    browser.save_screenshot(str(artifacts / "deployment-web-routes.png"))
    assert console_errors(browser) == []


def test_topology_shows_web_calling_emoji_and_voting(
    stack: LocalStack, browser: Any, artifacts: Path
) -> None:
    stack.traffic_step()
    browser.get(f"{stack.url}/topology?namespace=emojivoto")
    wait_js(browser, "document.querySelectorAll('#topology g.edge').length >= 3")
    edges = browser.execute_script(
        "return [...document.querySelectorAll('#topology g.edge')].map((g) => "
        "[g.dataset.src, g.dataset.dst, g.getAttribute('class')])"
    )
    found = {(s, d): cls for s, d, cls in edges}
    assert "ok" in found[("emojivoto/web", "emojivoto/emoji")]
    assert "warn" in found[("emojivoto/web", "emojivoto/voting")]  # 90% success
    assert ("emojivoto/vote-bot", "emojivoto/web") in found
    # Callers are left of what they call.
    xs = browser.execute_script(
        "const x = {}; for (const g of document.querySelectorAll('#topology g.node')) "
        "x[g.dataset.name] = g.getBoundingClientRect().left; return x;"
    )
    assert xs["emojivoto/vote-bot"] < xs["emojivoto/web"] < xs["emojivoto/voting"]
    browser.save_screenshot(str(artifacts / "topology.png"))


def test_tap_starts_shows_requests_and_stops(
    stack: LocalStack, browser: Any, artifacts: Path
) -> None:
    stack.connect_agent()
    browser.get(f"{stack.url}/tap?resource=deploy/web&namespace=emojivoto")
    browser.find_element("id", "tap-start").click()
    wait_js(browser, "document.querySelectorAll('#tap-events tr.tap-row').length >= 3")
    rows = table(browser, "tap-events")
    assert {r["Path"] for r in rows} == {"/emojivoto.v1.VotingService/VoteDoughnut"}
    # gRPC status 2 arrives with the end: the call failed although HTTP said 200.
    wait_js(
        browser,
        "[...document.querySelectorAll('#tap-events td[data-col=status]')]"
        ".every((c) => c.textContent === '200 · grpc 2')",
    )
    assert all(r["To"].startswith("deployment/voting") for r in rows)
    browser.save_screenshot(str(artifacts / "tap.png"))
    assert browser.find_element("id", "tap-start").get_attribute("disabled") == "true"
    browser.find_element("id", "tap-stop").click()
    wait_js(browser, "document.getElementById('tap-state').textContent === 'Stopped.'")
    deadline = time.monotonic() + 10
    while not any(c.HasField("stop") for c in stack.tap_commands):
        assert time.monotonic() < deadline, "the agent was never told to stop tapping"
        time.sleep(0.1)

    # A bad filter is refused with its reason shown on the page, and nothing starts.
    browser.find_element("name", "method").send_keys("G3T")
    browser.find_element("id", "tap-start").click()
    msg = wait_js(browser, "document.getElementById('error-box')?.textContent")
    assert "method" in msg
    assert browser.find_element("id", "tap-start").get_attribute("disabled") is None


def test_overview_and_nodes_pages(stack: LocalStack, browser: Any, artifacts: Path) -> None:
    stack.traffic_step()
    browser.get(f"{stack.url}/")
    wait_js(browser, "document.querySelector('#namespaces tr[data-namespace]')")
    namespaces = {r["Namespace"]: r for r in table(browser, "namespaces")}
    assert namespaces["emojivoto"]["Meshed"].endswith("/6")
    assert namespaces["emojivoto"]["Success"] == "97.50%"
    agents = {r["Node"]: r for r in table(browser, "agents")}
    assert agents["node1"]["Version"] == "0.1.0"
    browser.save_screenshot(str(artifacts / "overview.png"))
    browser.get(f"{stack.url}/nodes")
    wait_js(browser, "document.querySelector('#nodes tr[data-node]')")
    nodes = {r["Node"]: r for r in table(browser, "nodes")}
    assert nodes["node2"]["Memory"] == "28.6 MiB"
    assert nodes["node1"]["IP"] == "172.18.0.1"
    browser.save_screenshot(str(artifacts / "nodes.png"))


def test_unknown_deployment_is_a_404_page(stack: LocalStack, browser: Any, artifacts: Path) -> None:
    browser.get(f"{stack.url}/namespaces/emojivoto/deployments/nope")
    assert "404" in browser.title
    assert "deployment 'nope' does not exist" in browser.find_element("id", "error-message").text
    browser.save_screenshot(str(artifacts / "not-found.png"))
