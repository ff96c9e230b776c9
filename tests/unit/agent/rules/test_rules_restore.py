"""The restore transaction (what `RuleWorker.apply` writes, and `simulate` shows) pinned as text
for a fresh pod, a damaged one and a removal; and the properties that keep it safe.

Regenerate after an intended change with NODEMESH_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from nodeagent.rules import RedirectSettings, build_pod_plan, parse_save
from nodeagent.rules.model import NatPlan, NatState
from nodeagent.rules.restore import Transaction, empty_plan, plan_transaction
from nodeagent.rules.saved import parse_rule, parse_tables, render_restore
from nodeagent.rules.transparent import TransparentPlan

GOLDEN = Path(__file__).resolve().parents[3] / "golden" / "rules"
RESTORE = GOLDEN / "restore"
DAMAGED = parse_tables((RESTORE / "repair.save").read_text())


def pod_tables(case: str) -> list[NatPlan]:
    settings = RedirectSettings.from_dict(json.loads((GOLDEN / f"{case}.json").read_text()))
    return [*build_pod_plan(settings).tables(), TransparentPlan().mangle_plan()]


REMOVAL = [empty_plan(t, f) for t, f in (("nat", 4), ("filter", 4), ("mangle", 4), ("filter", 6))]


def transactions(plans: list[NatPlan], v4: Mapping[str, NatState]) -> list[Transaction]:
    return [
        plan_transaction(
            family, [p for p in plans if p.family == family], v4 if family == 4 else {}
        )
        for family in (4, 6)
    ]


CASES = {
    "fresh": lambda: transactions(pod_tables("strict"), {}),
    "repair": lambda: transactions(pod_tables("default"), DAMAGED),
    "remove": lambda: transactions(REMOVAL, DAMAGED),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_transaction_matches_golden(case: str) -> None:
    text = "".join(t.describe() for t in CASES[case]())
    golden = RESTORE / f"{case}.txt"
    if os.environ.get("NODEMESH_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()


def installed(plans: list[NatPlan], family: int) -> dict[str, NatState]:
    return {
        p.table: parse_save(render_restore(p), table=p.table) for p in plans if p.family == family
    }


def test_tables_that_match_their_plans_are_not_written() -> None:
    plans = pod_tables("strict")
    for family in (4, 6):
        t = plan_transaction(
            family, [p for p in plans if p.family == family], installed(plans, family)
        )
        assert t.in_sync and t.text == "" and all(d.in_sync for _, d in t.diffs)
        assert t.describe().endswith("nothing to write\n")


def test_only_the_tables_that_differ_get_a_block() -> None:
    plans = [p for p in pod_tables("default") if p.family == 4]
    observed = installed(plans, 4)
    del observed["mangle"]
    t = plan_transaction(4, plans, observed)
    assert [line for line in t.text.splitlines() if line.startswith("*")] == ["*mangle"]
    assert [where for where, d in ((p.where, d) for p, d in t.diffs) if not d.in_sync] == ["mangle"]


def test_foreign_rules_are_never_named() -> None:
    for case in CASES.values():
        for t in case():
            assert "FOREIGN" not in t.text
            for line in t.text.splitlines():
                if line.startswith(("-D", "-X", ":")):
                    assert "NODEMESH_" in line, line


def test_a_stale_jump_is_deleted_by_its_own_words_and_reads_back_as_that_rule() -> None:
    [v4, _] = CASES["repair"]()
    odd = [line for line in v4.text.splitlines() if "odd" in line]
    assert odd == [
        '-D PREROUTING -p udp -m comment --comment "odd \\"q\\" x" -j NODEMESH_PREROUTING'
    ]
    observed = DAMAGED["nat"].chains["PREROUTING"][1]
    assert parse_rule("-A" + odd[0][2:]) == observed


def test_one_transaction_takes_one_plan_per_table_of_its_family() -> None:
    plans = pod_tables("default")
    with pytest.raises(ValueError, match="one plan per table"):
        plan_transaction(4, plans, {})
    with pytest.raises(ValueError, match="one plan per table"):
        plan_transaction(4, [plans[0], plans[0]], {})
