"""The rendered plan (nat, filter, ip6 filter) for each case in tests/golden/rules/ is pinned.

Regenerate after an intended change with NODEMESH_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nodeagent.rules import (
    RedirectSettings,
    build_pod_plan,
    parse_save,
    render_pod_plan,
)

GOLDEN = Path(__file__).resolve().parents[3] / "golden" / "rules"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))


def test_cases_exist() -> None:
    assert {"default", "skips", "no-dns", "many-skips", "strict", "probes"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_plan_matches_golden(case: str) -> None:
    settings = RedirectSettings.from_dict(json.loads((GOLDEN / f"{case}.json").read_text()))
    text = render_pod_plan(build_pod_plan(settings))
    golden = GOLDEN / f"{case}.rules"
    if os.environ.get("NODEMESH_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"{golden} missing: run with NODEMESH_UPDATE_GOLDEN=1"
    assert text == golden.read_text()


@pytest.mark.parametrize("case", CASES)
def test_golden_text_parses_back_to_the_plan(case: str) -> None:
    # The golden file doubles as the expected iptables-save text of each table; parsing it must
    # give back exactly the planned rules, or diffing against a real table would report
    # phantom changes.
    pod = build_pod_plan(
        RedirectSettings.from_dict(json.loads((GOLDEN / f"{case}.json").read_text()))
    )
    sections = (GOLDEN / f"{case}.rules").read_text().split("# ")[1:]
    assert len(sections) == len(pod.tables())
    for section, plan in zip(sections, pod.tables(), strict=True):
        tool = section.split()[0]
        assert tool == (
            "iptables-legacy-restore" if plan.family == 4 else "ip6tables-legacy-restore"
        )
        state = parse_save(section, table=plan.table)
        for chain in plan.chains:
            assert state.chains[chain.name] == chain.rules
        jumps = tuple(r for name, rules in state.chains.items() if "_" not in name for r in rules)
        assert sorted(jumps, key=repr) == sorted(plan.jumps, key=repr)
