"""Read and write the netfilter tables of a pod's network namespace (blocking; the agent calls
this from the rule worker's thread).

One path for every table: one `ip[6]tables-legacy-save` per family reads what is there, the
sans-io `restore.plan_transaction` turns plan and observation into restore text, and one
`ip[6]tables-legacy-restore --noflush -w` per family writes it (nothing is run when the tables
already match). Each table's block is committed whole or not at all, so a pod never holds half
a table. Every tool runs as `nsenter --net=<netns> ...`, so no thread of the agent changes
namespace.

These are the *legacy* tables (the kernel's x_tables, as libiptc sees them): look at them with
`iptables-legacy-save`, not the nft-backed `iptables-save`. `-w` takes the xtables lock at its
default path, /run/xtables.lock: the rendered agent container mounts that file writable from the
node (the rest of its root filesystem is read-only), and the lock is the one every other
iptables user on the node takes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

from nodeagent.rules.diff import RuleDiff
from nodeagent.rules.model import TABLE, NatPlan, NatState
from nodeagent.rules.restore import (
    Transaction,
    empty_plan,
    plan_transaction,
    restore_tool,
    save_tool,
)
from nodeagent.rules.saved import parse_tables
from nodemesh.netns import NetnsId, netns_path

TIMEOUT = 10.0


class RulesError(RuntimeError):
    """The rules of a netns could not be read or written."""


def run_in(path: str, argv: list[str], stdin: str | None = None) -> str:
    """Run a tool inside the netns at `path`; its output, or RulesError naming what failed."""
    try:
        done = subprocess.run(
            ["nsenter", f"--net={path}", *argv],
            input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RulesError(f"{argv[0]} in {path}: {e}") from e
    if done.returncode != 0:
        raise RulesError(f"{' '.join(argv)} in {path}: {done.stderr.strip()}")
    return done.stdout


def read_tables(netns: str, family: int = 4) -> dict[str, NatState]:
    """Every table of one family in `netns` (the ones the kernel has made there: a table that
    was never used holds nothing), from one ip[6]tables-legacy-save."""
    return parse_tables(run_in(netns_path(netns), [save_tool(family)]))


def read_state(netns: str, *, table: str = TABLE, family: int = 4) -> NatState:
    """One whole table of `netns` (nat of IPv4 by default)."""
    return read_tables(netns, family).get(table, NatState({}))


def _refuse_own_netns(path: str) -> None:
    # A wrong path must never turn into rewriting the node's own tables.
    target = NetnsId.of(path)
    if target in (NetnsId.of("/proc/self/ns/net"), NetnsId.of("/proc/thread-self/ns/net")):
        raise RulesError(f"{path} is the agent's own network namespace")


def sync(netns: str, plans: Iterable[NatPlan], *, simulate: bool = False) -> list[Transaction]:
    """Make each table named by `plans` hold exactly its plan: per family, one save, then one
    restore when anything differs. `simulate` reads and plans but writes nothing. Returns each
    family's transaction (its diffs say what was wrong before; its text what was, or would be,
    written)."""
    path = netns_path(netns)
    by_family: dict[int, list[NatPlan]] = {}
    for plan in plans:
        by_family.setdefault(plan.family, []).append(plan)
    done = []
    for family, family_plans in by_family.items():
        observed = parse_tables(run_in(path, [save_tool(family)]))
        transaction = plan_transaction(family, family_plans, observed)
        if transaction.text and not simulate:
            _refuse_own_netns(path)
            run_in(path, [restore_tool(family), "--noflush", "-w"], stdin=transaction.text)
        done.append(transaction)
    return done


def apply_plan(netns: str, plan: NatPlan) -> RuleDiff:
    """Make nodemesh's chains in one table of `netns` match `plan`; return what was wrong
    before. When nothing differs nothing is written."""
    [transaction] = sync(netns, [plan])
    return transaction.diffs[0][1]


def remove_rules(netns: str, *, table: str = TABLE, family: int = 4) -> NatState:
    """Delete every nodemesh chain and every jump into one from one table; return what was
    removed."""
    [transaction] = sync(netns, [empty_plan(table, family)])
    return transaction.observed.get(table, NatState({})).owned()


def inspect_rules(
    netns: str, *, everything: bool = False, table: str = TABLE, family: int = 4
) -> NatState:
    """The nodemesh chains and jumps in one table of `netns` (nat of IPv4 by default; the
    whole table with everything=True)."""
    state = read_state(netns, table=table, family=family)
    return state if everything else state.owned()
