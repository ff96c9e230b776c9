"""Keeping the client's address on inbound connections: the mangle rules and policy route that
let the agent connect to a pod's app *from the client's IP* (an IP_TRANSPARENT socket made in the
pod's netns) and still receive the app's replies.

How: the agent's transparent sockets carry TRANSPARENT_MARK. Their first packet saves the mark
on the connection (CONNMARK); the app's replies, which belong to that connection, get the mark
back, and a policy rule sends marked packets to a table whose only route is `local 0.0.0.0/0`,
so replies addressed to the client's IP are delivered to the agent's socket instead of leaving
through eth0. Connections the app opens itself carry no mark and route normally.

The plan is data (`TransparentPlan`, rendered for golden tests); `apply`/`remove`/`problems`
run in the pod's netns from the rule worker's thread, with `nsenter` (iptables-legacy-restore,
ip), and are idempotent.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from nodemesh.netns import netns_path

TRANSPARENT_MARK = 0x6E6E
MARK_MASK = 0xFFFF
ROUTE_TABLE = 133
CHAIN = "NODEMESH_MANGLE_OUTPUT"
TIMEOUT = 10.0


class TransparentError(RuntimeError):
    pass


@dataclass(frozen=True)
class TransparentPlan:
    mark: int = TRANSPARENT_MARK
    table: int = ROUTE_TABLE

    def mangle_rules(self) -> list[str]:
        m = f"0x{self.mark:x}"
        return [
            f"-A {CHAIN} -m mark --mark {m} -m comment --comment "
            '"nodemesh transparent" -j CONNMARK --save-mark',
            f"-A {CHAIN} -m connmark --mark {m} -m comment --comment "
            f'"nodemesh transparent reply" -j MARK --set-xmark {m}/0xffffffff',
        ]

    def render_restore(self) -> str:
        """iptables-restore input for the mangle table (our chain only; --noflush keeps others)."""
        return "\n".join(["*mangle", f":{CHAIN} - [0:0]", *self.mangle_rules(), "COMMIT", ""])

    def rule_args(self) -> list[str]:
        return ["fwmark", f"0x{self.mark:x}/0x{MARK_MASK:x}", "lookup", str(self.table)]

    def route_args(self) -> list[str]:
        return ["local", "0.0.0.0/0", "dev", "lo", "table", str(self.table)]

    def render(self) -> str:
        """The whole plan as text, for golden tests and logs."""
        return (
            self.render_restore()
            + "-A OUTPUT -j " + CHAIN + "\n"
            + "ip rule add " + " ".join(self.rule_args()) + "\n"
            + "ip route add " + " ".join(self.route_args()) + "\n"
        )  # fmt: skip


def _run(netns: str, *argv: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(
            ["nsenter", f"--net={netns_path(netns)}", *argv],
            input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TransparentError(f"{' '.join(argv)} in {netns}: {e}") from e
    if done.returncode != 0:
        raise TransparentError(f"{' '.join(argv)} in {netns}: {done.stderr.strip()}")
    return done.stdout


def _mangle_lines(netns: str) -> list[str]:
    text = _run(netns, "iptables-legacy-save", "-t", "mangle")
    return [ln for ln in text.splitlines() if CHAIN in ln]


def _routes(netns: str, plan: TransparentPlan) -> str:
    try:
        return _run(netns, "ip", "route", "show", "table", str(plan.table))
    except TransparentError as e:
        if "does not exist" in str(e):  # the kernel makes a table on its first route
            return ""
        raise


def problems(netns: str, plan: TransparentPlan) -> list[str]:
    """What is missing or different, one line each (empty: in place)."""
    found = []
    lines = _mangle_lines(netns)
    if f"-A OUTPUT -j {CHAIN}" not in lines:
        found.append(f"missing jump from mangle OUTPUT to {CHAIN}")
    chain_rules = [ln for ln in lines if ln.startswith(f"-A {CHAIN} ")]
    if len(chain_rules) != len(plan.mangle_rules()):
        found.append(f"{CHAIN} has {len(chain_rules)} rules, the plan {len(plan.mangle_rules())}")
    if f"lookup {plan.table}" not in _run(netns, "ip", "rule", "show"):
        found.append(f"missing policy rule to table {plan.table}")
    if "local default" not in _routes(netns, plan):
        found.append(f"missing local route in table {plan.table}")
    return found


def apply(netns: str, plan: TransparentPlan) -> list[str]:
    """Install what is missing; returns what was wrong before (empty: nothing written)."""
    before = problems(netns, plan)
    if not before:
        return before
    _run(netns, "iptables-legacy-restore", "-w", "--noflush", stdin=plan.render_restore())
    if f"-A OUTPUT -j {CHAIN}" not in _mangle_lines(netns):
        _run(netns, "iptables-legacy", "-w", "-t", "mangle", "-I", "OUTPUT", "-j", CHAIN)
    if f"lookup {plan.table}" not in _run(netns, "ip", "rule", "show"):
        _run(netns, "ip", "rule", "add", *plan.rule_args())
    _run(netns, "ip", "route", "replace", *plan.route_args())
    return before


def remove(netns: str, plan: TransparentPlan) -> None:
    """Remove the jump, the chain, the policy rule and the route; absent parts are fine."""
    lines = _mangle_lines(netns)
    if f"-A OUTPUT -j {CHAIN}" in lines:
        _run(netns, "iptables-legacy", "-w", "-t", "mangle", "-D", "OUTPUT", "-j", CHAIN)
    if any(ln.startswith(f":{CHAIN}") for ln in lines):
        _run(netns, "iptables-legacy", "-w", "-t", "mangle", "-F", CHAIN)
        _run(netns, "iptables-legacy", "-w", "-t", "mangle", "-X", CHAIN)
    while f"lookup {plan.table}" in _run(netns, "ip", "rule", "show"):
        _run(netns, "ip", "rule", "del", *plan.rule_args())
    if "local default" in _routes(netns, plan):
        _run(netns, "ip", "route", "del", *plan.route_args())
