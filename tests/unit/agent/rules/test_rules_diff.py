"""Diffing an observed nat table against the plan finds exactly what the agent must repair."""

from __future__ import annotations

from dataclasses import replace

from nodeagent.rules import RedirectSettings, build_plan, diff_plan, parse_save, render_restore
from nodeagent.rules.model import OUTPUT_CHAIN, PREROUTING_CHAIN, NatState

PLAN = build_plan(RedirectSettings(skip_inbound_ports=((9000, 9000),)))
FOREIGN = """\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -j RETURN
COMMIT
"""


def state_of(plan_text: str, *, extra: str = "") -> NatState:
    """The plan's text plus foreign lines, as one observed table."""
    lines = plan_text.splitlines()
    lines[-1:-1] = [line for line in extra.splitlines() if line]
    return parse_save("\n".join(lines))


def test_applied_plan_is_in_sync_even_with_foreign_rules_around() -> None:
    text = render_restore(PLAN)
    assert diff_plan(PLAN, parse_save(text)).in_sync
    foreign = state_of(
        text,
        extra=":ISTIO_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j RETURN",
    )
    assert diff_plan(PLAN, foreign).in_sync


def test_fresh_netns_misses_everything() -> None:
    diff = diff_plan(PLAN, parse_save(FOREIGN))
    assert set(diff.missing_chains) == {OUTPUT_CHAIN, PREROUTING_CHAIN}
    assert len(diff.missing) == len(list(PLAN.rules()))
    assert not diff.extra and not diff.extra_chains


def test_one_deleted_rule_is_reported_missing() -> None:
    text = render_restore(PLAN)
    victim = (
        "-A NODEMESH_PREROUTING -p tcp -m tcp --dport 4143"
        ' -m comment --comment "nodemesh tunnel" -j RETURN'
    )
    assert victim in text.splitlines()
    diff = diff_plan(PLAN, parse_save(text.replace(victim + "\n", "")))
    assert [r.dport for r in diff.missing] == [4143]
    assert not diff.extra and not diff.in_sync
    assert diff.describe() == [f"missing rule {victim}"]


def test_duplicate_jump_and_stale_chain_are_extra() -> None:
    observed = state_of(
        render_restore(PLAN),
        extra=":NODEMESH_OLD - [0:0]\n-A OUTPUT -j NODEMESH_OUTPUT\n-A INPUT -j NODEMESH_OLD",
    )
    diff = diff_plan(PLAN, observed)
    assert diff.extra_chains == ("NODEMESH_OLD",)
    assert sorted(r.target for r in diff.extra) == ["NODEMESH_OLD", "NODEMESH_OUTPUT"]
    assert not diff.missing


def test_changed_setting_shows_as_missing_plus_extra() -> None:
    observed = parse_save(render_restore(PLAN))
    other = build_plan(RedirectSettings(skip_inbound_ports=((9001, 9001),)))
    diff = diff_plan(other, observed)
    assert [r.dports for r in diff.missing] == [("9001",)]
    assert [r.dports for r in diff.extra] == [("9000",)]


def test_reordered_rules_are_out_of_order() -> None:
    chain = PLAN.chain(OUTPUT_CHAIN)
    swapped = NatState(
        {
            "OUTPUT": PLAN.jumps[1:],
            "PREROUTING": PLAN.jumps[:1],
            OUTPUT_CHAIN: tuple(reversed(chain.rules)),
            PREROUTING_CHAIN: PLAN.chain(PREROUTING_CHAIN).rules,
        }
    )
    diff = diff_plan(PLAN, swapped)
    assert diff.out_of_order == (OUTPUT_CHAIN,)
    assert not diff.missing and not diff.extra and not diff.in_sync


def test_a_jump_with_extra_matches_is_not_the_planned_jump() -> None:
    observed = parse_save(
        render_restore(PLAN).replace(
            "-A OUTPUT -j NODEMESH_OUTPUT", "-A OUTPUT -p tcp -j NODEMESH_OUTPUT"
        )
    )
    diff = diff_plan(PLAN, observed)
    assert [(r.chain, r.target) for r in diff.missing] == [("OUTPUT", OUTPUT_CHAIN)]
    assert diff.extra == (replace(diff.missing[0], protocol="tcp"),)
