"""The transparent-return plan (mangle rules, policy rule, local route) pinned as text.
Regenerate after an intended change with NODEMESH_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

from nodeagent.rules.transparent import TransparentPlan

GOLDEN = Path(__file__).resolve().parents[3] / "golden" / "rules" / "transparent.txt"


def test_transparent_plan_matches_golden() -> None:
    text = TransparentPlan().render()
    if os.environ.get("NODEMESH_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_mark_differs_from_the_agent_mark_so_outbound_sockets_are_not_routed_locally() -> None:
    plan = TransparentPlan()
    assert plan.mark != 0x6E6D
    assert plan.rule_args() == ["fwmark", "0x6e6e/0xffff", "lookup", "133"]
