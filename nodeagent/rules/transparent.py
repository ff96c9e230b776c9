"""Keeping the client's address on inbound connections: the mangle rules and policy route that
let the agent connect to a pod's app *from the client's IP* (an IP_TRANSPARENT socket made in the
pod's netns) and still receive the app's replies.

How: the agent's transparent sockets carry TRANSPARENT_MARK. Their first packet saves the mark
on the connection (CONNMARK); the app's replies, which belong to that connection, get the mark
back, and a policy rule sends marked packets to a table whose only route is `local 0.0.0.0/0`,
so replies addressed to the client's IP are delivered to the agent's socket instead of leaving
through eth0. Connections the app opens itself carry no mark and route normally.

The plan is data (`TransparentPlan`, rendered for golden tests). Its mangle table is one more
table plan, written by the same transaction as the pod's nat and filter tables (`apply.sync`);
the policy rule and route are `ip`'s (`route_problems`, `apply_routes`, `remove_routes`).
`apply`/`remove`/`problems` do both parts for this plan alone. Everything runs in the pod's
netns through `nsenter` from the rule worker's thread, and is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent.rules.apply import RulesError, run_in, sync
from nodeagent.rules.model import ChainPlan, NatPlan, RuleSpec
from nodeagent.rules.restore import empty_plan
from nodeagent.rules.saved import render_restore
from nodemesh.netns import netns_path

TRANSPARENT_MARK = 0x6E6E
MARK_MASK = 0xFFFF
ROUTE_TABLE = 133
CHAIN = "NODEMESH_MANGLE_OUTPUT"
# CONNMARK --save-mark as iptables-save prints it back (the masks are the defaults).
SAVE_MARK = ("--save-mark", "--nfmask", "0xffffffff", "--ctmask", "0xffffffff")


@dataclass(frozen=True)
class TransparentPlan:
    mark: int = TRANSPARENT_MARK
    table: int = ROUTE_TABLE

    def mangle_plan(self) -> NatPlan:
        """The mangle table: save the mark on the connection, give it back to its replies."""
        m = f"0x{self.mark:x}"
        rules = (
            RuleSpec(chain=CHAIN, mark=m, comment="nodemesh transparent", target="CONNMARK",
                     target_args=SAVE_MARK),
            RuleSpec(chain=CHAIN, connmark=m, comment="nodemesh transparent reply",
                     target="MARK", target_args=("--set-xmark", f"{m}/0xffffffff")),
        )  # fmt: skip
        return NatPlan(
            chains=(ChainPlan(CHAIN, rules),),
            jumps=(RuleSpec(chain="OUTPUT", target=CHAIN),),
            table="mangle",
        )

    def rule_args(self) -> list[str]:
        return ["fwmark", f"0x{self.mark:x}/0x{MARK_MASK:x}", "lookup", str(self.table)]

    def route_args(self) -> list[str]:
        return ["local", "0.0.0.0/0", "dev", "lo", "table", str(self.table)]

    def render(self) -> str:
        """The whole plan as text, for golden tests and logs."""
        return (
            render_restore(self.mangle_plan())
            + "ip rule add " + " ".join(self.rule_args()) + "\n"
            + "ip route add " + " ".join(self.route_args()) + "\n"
        )  # fmt: skip


def _ip(netns: str, *argv: str) -> str:
    return run_in(netns_path(netns), ["ip", *argv])


def _routes(netns: str, plan: TransparentPlan) -> str:
    try:
        return _ip(netns, "route", "show", "table", str(plan.table))
    except RulesError as e:
        if "does not exist" in str(e):  # the kernel makes a table on its first route
            return ""
        raise


def _route_state(netns: str, plan: TransparentPlan) -> tuple[bool, bool]:
    """Whether the policy rule and the local route are there."""
    has_rule = f"lookup {plan.table}" in _ip(netns, "rule", "show")
    return has_rule, "local default" in _routes(netns, plan)


def _route_lines(plan: TransparentPlan, has_rule: bool, has_route: bool) -> list[str]:
    found = [] if has_rule else [f"missing policy rule to table {plan.table}"]
    return found + ([] if has_route else [f"missing local route in table {plan.table}"])


def route_problems(netns: str, plan: TransparentPlan) -> list[str]:
    """What is missing of the policy rule and the local route, one line each."""
    return _route_lines(plan, *_route_state(netns, plan))


def apply_routes(netns: str, plan: TransparentPlan) -> list[str]:
    """Add the policy rule and the local route where missing; returns what was missing."""
    has_rule, has_route = _route_state(netns, plan)
    if not has_rule:
        _ip(netns, "rule", "add", *plan.rule_args())
    if not has_route:
        _ip(netns, "route", "replace", *plan.route_args())
    return _route_lines(plan, has_rule, has_route)


def remove_routes(netns: str, plan: TransparentPlan) -> None:
    """Remove the policy rule and the route; absent ones are fine."""
    while f"lookup {plan.table}" in _ip(netns, "rule", "show"):
        _ip(netns, "rule", "del", *plan.rule_args())
    if "local default" in _routes(netns, plan):
        _ip(netns, "route", "del", *plan.route_args())


def problems(netns: str, plan: TransparentPlan) -> list[str]:
    """What is missing or different, one line each (empty: in place)."""
    [transaction] = sync(netns, [plan.mangle_plan()], simulate=True)
    found = [f"mangle: {line}" for _, diff in transaction.diffs for line in diff.describe()]
    return found + route_problems(netns, plan)


def apply(netns: str, plan: TransparentPlan) -> list[str]:
    """Install what is missing; returns what was wrong before (empty: nothing written)."""
    [transaction] = sync(netns, [plan.mangle_plan()])
    found = [f"mangle: {line}" for _, diff in transaction.diffs for line in diff.describe()]
    return found + apply_routes(netns, plan)


def remove(netns: str, plan: TransparentPlan) -> None:
    """Remove the jump, the chain, the policy rule and the route; absent parts are fine."""
    sync(netns, [empty_plan("mangle", 4)])
    remove_routes(netns, plan)
