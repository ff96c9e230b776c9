"""What to write so a netns holds exactly the plan: one `ip[6]tables-legacy-restore --noflush`
transaction per address family, as text (no I/O).

Input: the plans of every table nodemesh writes in one family, and those tables as observed
(parsed from one `ip[6]tables-legacy-save`). Output: a `Transaction` holding each table's diff
and the restore text, with a `*table ... COMMIT` block for each table that differs and nothing
for the others; no text at all when everything is in sync, so nothing is written and the
kernel's tables (and their counters) stay untouched. iptables-restore commits each table's
block whole or not at all, and stops at the first failing block.

Inside a block, for one table:
1. `:CHAIN` for every nodemesh chain whose rules differ from the plan (restore creates it, or
   with --noflush empties it) and for every nodemesh chain the plan no longer has;
2. `-D` for every jump into a nodemesh chain beyond one per planned jump (by its words, so it
   can never delete another tool's rule; an observed rule that changed meanwhile makes the
   whole transaction fail instead);
3. `-X` for the chains the plan no longer has (now empty and unreferenced);
4. `-A` the planned rules of the chains emptied in 1.;
5. `-I` every planned jump that is missing, at the top of its built-in chain.
Foreign chains and rules are never named.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nodeagent.rules.diff import RuleDiff, diff_plan
from nodeagent.rules.model import NatPlan, NatState, RuleSpec, is_owned_chain, render_rule


def restore_tool(family: int) -> str:
    return "iptables-legacy-restore" if family == 4 else "ip6tables-legacy-restore"


def save_tool(family: int) -> str:
    return "iptables-legacy-save" if family == 4 else "ip6tables-legacy-save"


def empty_plan(table: str, family: int) -> NatPlan:
    """The plan that says: nothing of nodemesh's in this table (what removal applies)."""
    return NatPlan(chains=(), jumps=(), table=table, family=family)


def table_block(plan: NatPlan, observed: NatState) -> list[str]:
    """The restore lines that make `observed` hold exactly `plan` (empty when in sync)."""
    if diff_plan(plan, observed).in_sync:
        return []
    owned = observed.owned()
    wanted = {c.name: c for c in plan.chains}
    rewrite = [c for c in plan.chains if owned.chains.get(c.name) != c.rules]
    dropped = [n for n in owned.chains if is_owned_chain(n) and n not in wanted]
    kept: list[RuleSpec] = []
    stale: list[RuleSpec] = []
    for name, rules in owned.chains.items():
        if is_owned_chain(name):
            continue
        for jump in rules:
            if jump in plan.jumps and jump not in kept:
                kept.append(jump)
            else:
                stale.append(jump)
    lines = [f"*{plan.table}"]
    lines += [f":{name} - [0:0]" for name in [c.name for c in rewrite] + dropped]
    lines += [render_rule(jump, "-D") for jump in stale]
    lines += [f"-X {name}" for name in dropped]
    lines += [render_rule(rule) for c in rewrite for rule in c.rules]
    lines += [render_rule(jump, "-I") for jump in plan.jumps if jump not in kept]
    lines.append("COMMIT")
    return lines


@dataclass(frozen=True)
class Transaction:
    """One family's change: the tables as observed, each planned table's diff (in plan order)
    and the restore text that makes them match their plans ("" when they already do)."""

    family: int
    observed: Mapping[str, NatState]
    diffs: tuple[tuple[NatPlan, RuleDiff], ...]
    text: str

    @property
    def tool(self) -> str:
        return restore_tool(self.family)

    @property
    def in_sync(self) -> bool:
        return not self.text

    def describe(self) -> str:
        """The text headed by the command that would load it, for logs and `--simulate`."""
        if not self.text:
            return f"# {self.tool}: nothing to write\n"
        return f"# {self.tool} --noflush -w\n{self.text}"


def plan_transaction(
    family: int, plans: Iterable[NatPlan], observed: Mapping[str, NatState]
) -> Transaction:
    """What one restore must write so each of `plans` (all of `family`, one per table) holds."""
    plans = tuple(plans)
    tables = [p.table for p in plans]
    if any(p.family != family for p in plans) or len(set(tables)) != len(tables):
        raise ValueError(f"one IPv{family} transaction takes one plan per table, not {tables}")
    lines: list[str] = []
    diffs = []
    for plan in plans:
        have = observed.get(plan.table, NatState({}))
        diffs.append((plan, diff_plan(plan, have)))
        lines += table_block(plan, have)
    text = "\n".join(lines) + "\n" if lines else ""
    return Transaction(family, observed, tuple(diffs), text)
