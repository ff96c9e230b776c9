"""bench/controlplane_scale.py, small and bounded: 20 simulated agents against a real control
plane. The report has every figure the full run reports, and every pod change reached every
agent. (The full size, 500 nodes x 20 pods, is run by hand; its results are in bench/results.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
NODES = int(os.environ.get("NODEMESH_CP_SCALE_NODES", "20"))

pytestmark = pytest.mark.timeout(300)


def test_small_scale_run_reports_every_figure_and_every_change_reached_every_agent(
    tmp_path: Path,
) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bench.controlplane_scale", f"--nodes={NODES}",
         "--pods-per-node=10", "--phase-seconds=3", "--churn=10", "--stat-calls=3",
         "--workers=2", f"--out={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (data_file,) = tmp_path.glob("controlplane-scale-*x10-*.json")
    r = json.loads(data_file.read_text())
    assert (
        (tmp_path / data_file.name.replace(".json", ".md"))
        .read_text()
        .startswith("# nodemesh control plane at scale")
    )
    assert r["agents"] == NODES and r["changes_written"] >= 20
    assert r["changes_incomplete"] == 0, r["incomplete_examples"]
    assert r["change_to_all_agents_s"]["n"] == r["changes_written"]
    assert 0 < r["change_to_all_agents_s"]["p50"] <= r["change_to_all_agents_s"]["p99"]
    assert not r["agent_errors"], r["agent_errors"]
    assert r["reports_accepted"] >= NODES * 3 and r["reports_refused"] == 0
    assert r["memory"]["series"] == NODES * 10 * 2  # an inbound and an outbound series per pod
    assert r["memory"]["per_pod_bytes"] > 0 and r["memory"]["rss_peak_bytes"] > 0
    assert r["stat"]["pod"]["rows"] >= NODES * 10 and r["stat"]["pod"]["requests"] > 0
    for phase in ("idle", "telemetry", "churn", "stat"):
        assert r["phases"][phase]["cpu_s"] >= 0 and r["phases"][phase]["seconds"] > 0
    assert [t["target"].split(",")[0] for t in r["targets"]] == [
        f"pod change -> all {NODES} agents",
        "control-plane RSS (peak)",
        "telemetry ingest CPU",
        f"Stat p99 over {NODES * 10} pods",
    ]
