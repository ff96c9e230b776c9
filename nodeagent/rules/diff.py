"""Compare a nat plan with an observed nat table: what is missing, extra or out of order."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from nodeagent.rules.model import NatPlan, NatState, RuleSpec, is_owned_chain, render_rule


@dataclass(frozen=True)
class RuleDiff:
    """How an observed table differs from the plan, for nodemesh-owned things only.

    Foreign chains and rules never appear here. A jump's position within its built-in chain is
    not checked: nodemesh inserts its jumps first but does not fight other tools for the top.
    """

    missing_chains: tuple[str, ...] = ()
    extra_chains: tuple[str, ...] = ()
    missing: tuple[RuleSpec, ...] = ()
    extra: tuple[RuleSpec, ...] = ()
    out_of_order: tuple[str, ...] = ()
    # Differences outside the nat table (the transparent-return mangle rules and routes).
    other: tuple[str, ...] = ()

    @property
    def in_sync(self) -> bool:
        return (
            not (self.missing_chains or self.extra_chains or self.missing or self.extra)
            and not self.out_of_order
            and not self.other
        )

    def describe(self) -> list[str]:
        """One line per difference, for logs and `CHECK` answers."""
        lines = [f"missing chain {c}" for c in self.missing_chains]
        lines += [f"extra chain {c}" for c in self.extra_chains]
        lines += [f"missing rule {render_rule(r)}" for r in self.missing]
        lines += [f"extra rule {render_rule(r)}" for r in self.extra]
        lines += [f"rules of {c} out of order" for c in self.out_of_order]
        return lines + list(self.other)


def _multiset_minus(a: Iterable[RuleSpec], b: Iterable[RuleSpec]) -> list[RuleSpec]:
    """Items of `a` not matched one-for-one by items of `b`, keeping `a`'s order."""
    left = Counter(b)
    out = []
    for item in a:
        if left[item]:
            left[item] -= 1
        else:
            out.append(item)
    return out


def diff_plan(plan: NatPlan, observed: NatState) -> RuleDiff:
    """What must change for `observed` to hold exactly the plan's chains and jumps."""
    owned = observed.owned()
    planned_names = {c.name for c in plan.chains}
    missing_chains: list[str] = []
    missing: list[RuleSpec] = []
    extra: list[RuleSpec] = []
    out_of_order: list[str] = []

    for chain in plan.chains:
        if chain.name not in owned.chains:
            missing_chains.append(chain.name)
            missing += chain.rules
            continue
        have = owned.chains[chain.name]
        lacking = _multiset_minus(chain.rules, have)
        surplus = _multiset_minus(have, chain.rules)
        missing += lacking
        extra += surplus
        if not lacking and not surplus and have != chain.rules:
            out_of_order.append(chain.name)

    extra_chains = sorted(n for n in owned.chains if is_owned_chain(n) and n not in planned_names)
    # Jumps live in chains nodemesh does not own; only the jumps themselves are compared.
    have_jumps = [r for n, rules in owned.chains.items() if not is_owned_chain(n) for r in rules]
    missing += _multiset_minus(plan.jumps, have_jumps)
    extra += _multiset_minus(have_jumps, plan.jumps)
    return RuleDiff(
        missing_chains=tuple(missing_chains),
        extra_chains=tuple(extra_chains),
        missing=tuple(missing),
        extra=tuple(extra),
        out_of_order=tuple(out_of_order),
    )
