"""The lab's local source at the scale bench's size: CPU of one poll of the state directory,
unchanged and under churn (the poll runs in a thread of the control plane and holds the
interpreter lock the event loop needs while it compares files).

    .venv/bin/python -m bench.local_scan [--nodes 500] [--pods-per-node 20] [--polls 40]

Writes the bench's objects (bench/controlplane_scale.py) into a temporary directory, scans them
once, then times polls: with nothing changed, and with `--changes-per-poll` churn ticks written
before each (50 changes/s at a poll every 0.2 s: 10). Prints the thread CPU per poll (median,
best) and the events found.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.controlplane_scale import Churn, Plan, StateDir, layout, write_cluster
from controlplane.sources.local import LocalSource


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--pods-per-node", type=int, default=20)
    ap.add_argument("--polls", type=int, default=40)
    ap.add_argument("--changes-per-poll", type=int, default=10)
    a = ap.parse_args(argv)
    plan = Plan(
        nodes=a.nodes, pods_per_node=a.pods_per_node, pods_per_service=10, churn=50,
        phase_seconds=1, workers=1, stat_calls=1,
    )  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="nm-localscan-"))
    try:
        spots = layout(plan)
        state = StateDir(work)
        write_cluster(state, plan, spots)
        source = LocalSource(work)
        t0 = time.thread_time()
        first = source.scan()
        print(f"first scan: {len(first)} objects, {time.thread_time() - t0:.2f} CPU-s")
        churn = Churn(state, plan, spots)
        for label, changes in (("unchanged", 0), ("churn", a.changes_per_poll)):
            took, found = [], 0
            for _ in range(a.polls):
                for _ in range(changes):
                    churn.tick()
                t0 = time.thread_time()
                found += len(source.scan())
                took.append(time.thread_time() - t0)
            print(
                f"{label}: poll CPU median {statistics.median(took) * 1000:.1f} ms, best "
                f"{min(took) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms over {a.polls} polls "
                f"({found} events)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
