"""`make bench-smoke`: the benchmark harness runs end to end on its own lab in seconds and writes
a results JSON with all paths (the L4 three, and the L7 route vs HAProxy in HTTP mode), sane
latency figures, and evidence that the proxied paths really went through their proxies."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

# Full-speed load generators: the two such modules share one worker, one after the other.
pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.xdist_group("full-speed-load")]

REPO = Path(__file__).resolve().parents[2]
NODEMESH = str(Path(sys.executable).parent / "nodemesh")
PATHS = ("direct", "nodemesh", "haproxy", "nodemesh-l7", "haproxy-http")
QUANTILES = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")


@pytest.mark.timeout(420)
def test_bench_smoke_writes_results_for_all_paths(tmp_path: Path) -> None:
    name = "bsmoke" + uuid.uuid4().hex[:5]
    try:
        res = subprocess.run(
            [sys.executable, "-m", "bench.meshbench", "--smoke", "--name", name,
             "--out", str(tmp_path)],
            cwd=REPO, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
    finally:
        subprocess.run([NODEMESH, "lab", "down", "--name", name], capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    assert (tmp_path / "latest.md").read_text().startswith("# nodemesh benchmark")
    assert data["kind"] == "smoke"
    assert set(data["paths"]) == set(PATHS)
    rates = [str(r) for r in data["plan"]["rates"]]
    for path in PATHS:
        for rate in rates:
            run = data["paths"][path]["http"][rate]
            assert "failed" not in run, (path, rate, run)
            # Requests that never came back are in the histogram too (at the latency they had
            # reached), so a proxied path under repair still yields ordered figures.
            # Merged from the valid turns (a turn rerun for noise is not counted twice).
            expected = (
                float(rate) * data["plan"]["duration"] / data["plan"]["rounds"] * run["rounds"]
            )
            assert abs(run["scheduled"] - expected) <= run["rounds"], (path, rate, run["scheduled"])
            values = [run[q] for q in QUANTILES]
            assert values[0] > 0, (path, rate, values)
            assert values == sorted(values), (path, rate, values)
    for rate in rates:
        direct = data["paths"]["direct"]["http"][rate]
        assert direct["errors"] == 0 and direct["completed"] == direct["scheduled"]
    for kind in ("grpc", "newconn"):
        assert data["paths"]["direct"][kind]["errors"] == 0, kind
        assert data["paths"]["direct"][kind]["p50_ms"] > 0, kind
    assert data["paths"]["direct"]["bulk"]["gbit_s"] > 0
    # The two proxied paths went through their proxies, not around them.
    checks = data["path_checks"]
    assert checks["haproxy_redirected_connections"] > 0
    assert sum(checks["nodemesh_agent_connections"].values()) > 0
    assert checks["haproxy_http_redirected_connections"] > 0
    assert sum(checks["nodemesh_l7_agent_connections"].values()) > 0
    # nodemesh-l7 took the L7 path (its route answered) and both server pods got requests.
    l7 = checks["nodemesh_l7_requests"]
    assert sum(n for route, n in l7["route"].items() if "bench-route" in route) > 0, l7
    assert len(l7["server_pod"]) == 2 and min(l7["server_pod"].values()) > 0, l7
    # The L7 paths answered every request of the smoke rates (retries and balancing working).
    for path in ("nodemesh-l7", "haproxy-http"):
        for rate in rates:
            run = data["paths"][path]["http"][rate]
            assert run["errors"] == 0 and run["completed"] == run["scheduled"], (path, rate, run)
        assert data["paths"][path]["newconn"]["p50_ms"] > 0, path
    assert any(t["target"].startswith("L7 route p99") for t in data["targets"])
    assert "## L7 path: nodemesh-l7 vs haproxy-http" in (tmp_path / "latest.md").read_text()
    assert {t["target"].split(" at ")[0] for t in data["targets"]} >= {"added p50", "added p99"}
    assert data["resources"]["rss_with_idle_pods_bytes"]
    # Both searches ran on both paths: keep-alive requests/s and new connections/s.
    for path in ("nodemesh", "haproxy"):
        for key in ("search", "newconn_search"):
            assert data["paths"][path][key]["steps"], (path, key)
    assert data["paths"]["nodemesh"]["newconn_search"]["limit_added_p99_ms"] == 5.0
    assert any(t["target"].startswith("highest rate, new connections/s") for t in data["targets"])
