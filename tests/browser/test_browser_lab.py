"""The dashboard in a real lab with emojivoto, in headless Chromium: the deployments table, a
deployment's charts, the topology and a live tap, with screenshots, page load times and the
dashboard's memory written to test-artifacts/browser/lab-measurements.json.

The figures depend on the node agents reporting telemetry and tap events. The test first asks
the public API whether traffic is being reported; the checks that need it run only then, and
are otherwise recorded as an expected failure with the reason (the page checks run anyway)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from browser_pages import console_errors, external_requests, load_ms, table, wait_js

from tests.integration.labkit import DEMO, NODEMESH, nm

pytestmark = [pytest.mark.browser, pytest.mark.root, pytest.mark.lab]

EMOJIVOTO = {"web", "emoji", "voting", "vote-bot"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as rsp:
        return json.load(rsp)


@dataclass
class LabDashboard:
    lab: str
    url: str
    proc: subprocess.Popen[bytes]
    measured: dict[str, Any] = field(default_factory=dict)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")


@pytest.fixture
def lab_dashboard(tmp_path: Path) -> Iterator[LabDashboard]:
    name = "dash" + uuid.uuid4().hex[:6]
    proc = None
    try:
        nm("lab", "up", "--name", name, "--api-port", "0", "--dashboard-port", "0", *DEMO)
        status = json.loads(nm("lab", "status", "--name", name, "-o", "json"))
        api = next(f for f in status["forwards"] if f["service"] == "nodemesh-controlplane")
        port = free_port()
        log = open(tmp_path / "dashboard.log", "wb")
        # The dashboard runs on the host against the forwarded public API, as a user would.
        proc = subprocess.Popen(
            [sys.executable, "-m", "dashboard.main", "--public-api",
             f"{api['host']}:{api['local_port']}", "--addr", f"127.0.0.1:{port}",
             "--sample-seconds", "2",
             # As the lab's admin (a dashboard of its own has its own ServiceAccount's token).
             "--token-file", f"/run/nodemesh/{name}/access/admin.token"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "dashboard.log").read_text()
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.2)
        yield LabDashboard(name, url, proc)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run([NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300)


def traffic_reported(url: str, *, within: float) -> bool:
    """Whether the public API (through the dashboard) shows emojivoto's web serving requests."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        rows = get_json(url + "/api/deployments?namespace=emojivoto&window=10")["deployments"]
        if any(r["name"] == "web" and r["rps"] > 0 for r in rows):
            return True
        time.sleep(2)
    return False


def visit(driver: Any, d: LabDashboard, path: str, what: str) -> None:
    driver.get(d.url + path)
    d.measured.setdefault("load_ms", {})[what] = round(load_ms(driver), 1)


def test_dashboard_in_the_lab(lab_dashboard: LabDashboard, browser: Any, artifacts: Path) -> None:
    d = lab_dashboard
    # Up to 40 s: the agents' first reports, then a complete 10 s bucket in the store.
    has_traffic = traffic_reported(d.url, within=40)
    d.measured["traffic_reported"] = has_traffic
    missing: list[str] = []

    # Deployments: the emojivoto Deployments are listed, with numbers that move.
    visit(browser, d, "/deployments?namespace=emojivoto", "deployments")
    wait_js(browser, "document.querySelectorAll('#deployments tr[data-deployment]').length >= 4")
    rows = {r["Deployment"]: r for r in table(browser, "deployments")}
    assert set(rows) == EMOJIVOTO
    assert all(r["Meshed"] == "1/1" for r in rows.values()), rows
    browser.save_screenshot(str(artifacts / "lab-deployments-1.png"))
    if has_traffic:
        before = json.dumps(table(browser, "deployments"))
        wait_js(
            browser,
            f"JSON.stringify([...document.querySelectorAll('#deployments tbody tr')].map((r) => "
            f"Object.fromEntries([...r.cells].map((c, i) => [document.querySelector("
            f"'#deployments thead tr').cells[i].textContent.trim(), c.textContent.trim()])))) "
            f"!== {json.dumps(before)}",
            timeout=40,
            what="the deployments table to change",
        )
        web = {r["Deployment"]: r for r in table(browser, "deployments")}["web"]
        assert float(web["RPS"]) > 0 and web["Success"].endswith("%"), web
        browser.save_screenshot(str(artifacts / "lab-deployments-2.png"))
    else:
        missing.append("deployments table numbers changing")

    # A deployment page draws its three charts.
    time.sleep(4)  # two history samples at least (every 2 s here)
    visit(browser, d, "/namespaces/emojivoto/deployments/web", "deployment")
    wait_js(browser, "document.querySelector('#chart-rps path.line')", what="the RPS line")
    for chart in ("chart-success", "chart-rps", "chart-latency"):
        assert browser.execute_script(f"return !!document.querySelector('#{chart} svg')"), chart
    if has_traffic:
        wait_js(browser, "document.querySelectorAll('#chart-latency path.line').length === 3",
                what="p50/p95/p99 lines")  # fmt: skip
        wait_js(browser, "document.querySelector('#chart-success path.line')")
        for dst in ("emoji", "voting"):  # the page refreshes itself every 3 s
            wait_js(browser, f"document.querySelector('#outbound tr[data-peer=\"emojivoto/{dst}\"]')",
                    timeout=40, what=f"the outbound edge to {dst}")  # fmt: skip
    else:
        missing.append("latency and success charts with data, outbound edges")
    browser.save_screenshot(str(artifacts / "lab-deployment-web.png"))

    # Topology: web -> emoji and web -> voting.
    visit(browser, d, "/topology?namespace=emojivoto", "topology")
    wait_js(browser, "document.querySelectorAll('#topology g.node').length >= 4")
    if has_traffic:
        for dst in ("emoji", "voting"):
            wait_js(
                browser,
                f'document.querySelector(\'#topology g.edge[data-src="emojivoto/web"]'
                f'[data-dst="emojivoto/{dst}"]\')',
                timeout=40,
                what=f"the edge web -> {dst}",
            )
    else:
        missing.append("topology edges web -> emoji, web -> voting")
    browser.save_screenshot(str(artifacts / "lab-topology.png"))

    # Tap: started from the page, live requests, stopped from the page.
    visit(browser, d, "/tap?resource=deploy/web&namespace=emojivoto", "tap")
    browser.find_element("id", "tap-start").click()
    wait_js(browser, "document.getElementById('tap-state').textContent.startsWith('Tapping')")
    try:
        wait_js(browser, "document.querySelectorAll('#tap-events tr.tap-row').length >= 3",
                timeout=20, what="tap rows")  # fmt: skip
        tapped = table(browser, "tap-events")
        assert all(r["Path"].startswith("/") and r["Method"] for r in tapped), tapped
        d.measured["tap_rows"] = len(tapped)
    except AssertionError:
        missing.append("tap rows (no tap event reached the page in 20 s)")
    browser.save_screenshot(str(artifacts / "lab-tap.png"))
    browser.find_element("id", "tap-stop").click()
    wait_js(browser, "document.getElementById('tap-state').textContent === 'Stopped.'")

    visit(browser, d, "/", "overview")
    wait_js(browser, "document.querySelector('#agents tr[data-node]')")
    agents = {r["Node"]: r for r in table(browser, "agents")}
    assert set(agents) == {"node1", "node2"}
    visit(browser, d, "/nodes", "nodes")
    wait_js(browser, "document.querySelector('#nodes tr[data-node]')")
    browser.save_screenshot(str(artifacts / "lab-nodes.png"))
    assert external_requests(browser, d.url) == []
    assert console_errors(browser) == []

    d.measured["dashboard_rss_bytes"] = d.rss_bytes()
    d.measured["missing"] = missing
    (artifacts.parent / "lab-measurements.json").write_text(json.dumps(d.measured, indent=2))
    print("\nlab dashboard measurements:", json.dumps(d.measured))
    if missing:
        pytest.xfail("no traffic reported by the agents for: " + "; ".join(missing))
