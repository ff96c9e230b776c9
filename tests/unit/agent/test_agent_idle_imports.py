"""What the agent's process set loads, so that memory saved there (issue 17: "agent RSS with 100
idle pods", the socket keeper's VmRSS plus the agent's) does not silently come back.

- The socket keeper (the container's PID 1 beside every agent) imports no logging, dataclasses,
  typing, subprocess, ctypes or argparse: they cost it ~3.6 MB of RSS (15.6 -> 12.0 MB).
  Checked in a real keeper run, its agent started and reaped, as the container runs it.
- The DaemonSet (and so the lab) runs the keeper and the agent with PYTHONOPTIMIZE=2: no
  docstrings in their code objects (~1.6 MB of the pair). Checked with the rendered manifest's
  environment, in the agent's own module graph.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from nodemesh.cli.install import agent as agent_install
from nodemesh.cli.lab_mesh import LAB_VALUES

REPO = Path(__file__).resolve().parents[3]

# Each was measured in the keeper (python -c 'import ...', RSS after gc, this venv).
KEEPER_MUST_NOT_LOAD = {
    "logging": "~0.65 MB with threading, traceback, string",
    "dataclasses": "~1.1 MB with inspect, ast, dis, tokenize",
    "typing": "~0.4 MB",
    "subprocess": "~0.55 MB with threading, locale",
    "ctypes": "~0.35 MB",
    "argparse": "~0.3 MB with gettext",
    "asyncio": "several MB with ssl (test_agent_keeper maps no libssl either)",
}

KEEPER_RUN = textwrap.dedent(
    """
    import json, sys
    from nodeagent.handover import keeper

    # The keeper's whole life: start an agent (one that exits at once), hold, reap, return.
    rc = keeper.run([], agent=[sys.executable, "-c", "pass"])
    print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}))
    """
)


def test_the_socket_keeper_loads_none_of_the_heavy_modules() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    out = subprocess.run(
        [sys.executable, "-c", KEEPER_RUN],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["rc"] == 0  # the agent ran and was reaped with its status
    loaded = {m.split(".")[0] for m in seen["modules"]}
    found = {m: why for m, why in KEEPER_MUST_NOT_LOAD.items() if m in loaded}
    assert not found, f"the socket keeper loads {found}"


def _agent_container_env() -> dict[str, str]:
    ds = agent_install.daemonset(LAB_VALUES)
    (agent,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"]
    return {e["name"]: e["value"] for e in agent.get("env", []) if "value" in e}


AGENT_GRAPH = textwrap.dedent(
    """
    import json, sys
    import nodeagent.handover.keeper  # the container's first process (--keep-sockets)
    import nodeagent.main  # the agent: imports everything it runs

    ours = [m for name, m in sys.modules.items() if name.startswith(("nodeagent", "nodemesh"))]
    with_doc = sorted(m.__name__ for m in ours if m.__doc__)
    print(json.dumps({"flags": sys.flags.optimize, "modules": len(ours), "with_doc": with_doc}))
    """
)


def test_the_daemonset_runs_the_agent_without_docstrings() -> None:
    env = _agent_container_env()
    assert env.get("PYTHONOPTIMIZE") == "2", env
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("COVERAGE_", "PYTHON"))}
    out = subprocess.run(
        [sys.executable, "-c", AGENT_GRAPH],
        cwd=REPO,
        env={**run_env, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["flags"] == 2
    assert seen["modules"] > 100
    assert seen["with_doc"] == [], "docstrings kept in the agent's memory"
