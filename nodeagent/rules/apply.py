"""Execute a table plan inside a pod's network namespace (blocking; call from a worker thread).

Writes go through python-iptables (`iptc`), which drives libiptc (IPv4) and libip6tc (IPv6)
and therefore the *legacy* tables: look at them with `iptables-legacy-save` and
`ip6tables-legacy-save`, not the nft-backed `iptables-save`. libiptc takes no lock file, so
nothing here needs a writable /run (the agent's root filesystem is read-only). Reads use
`nsenter --net=<netns> ip[6]tables-legacy-save -t <table>`: python-iptables reads a match's
parameters by pointing the whole process's fd 1 at a pipe while libxtables prints them, which in a
multi-threaded agent would swallow (or break, when the pipe fills) whatever another thread
writes to stdout meanwhile. Writing does not print, so nothing here touches fd 1.

Library paths: on this Debian 12 machine python-iptables finds libxtables.so.12 and libip4tc.so.2
(package `iptables`) with ctypes.util.find_library and needs no setting. The extension directory
it would find by running `ldconfig -N -v` at import; `_iptc()` sets XTABLES_LIBDIR to
/usr/lib/<multiarch>/xtables first when that exists, which skips the subprocess (an explicitly
set XTABLES_LIBDIR is left alone).

python-iptables caches one `Table` object per table name for the whole process, and its handle
belongs to the netns the handle was opened in. With autocommit on, `refresh()` and `close()`
*commit* the old handle before dropping it: refreshing a handle opened in another netns would
write that netns's whole nat table into the current one. So autocommit is switched off before
every refresh, all iptc work in the process is serialised by `_LOCK`, and the written handle
is dropped (without a commit) for a fresh one before the thread leaves the pod's netns; no
cached table is ever left without a handle (see `_live_handles`). Anything else in the process
that uses iptc must go through this module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import os
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from nodeagent.rules.diff import RuleDiff, diff_plan
from nodeagent.rules.model import (
    SYN_FLAGS,
    TABLE,
    NatPlan,
    NatState,
    RuleSpec,
    is_owned_chain,
)
from nodeagent.rules.saved import parse_save
from nodemesh.netns import CLONE_NEWNET, NetnsError, NetnsId, netns_path

_LOCK = threading.Lock()
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
SAVE_TIMEOUT = 10.0


class RulesError(RuntimeError):
    """The nat rules of a netns could not be read or written."""


def _iptc() -> ModuleType:
    if "XTABLES_LIBDIR" not in os.environ:
        multiarch = sysconfig.get_config_var("MULTIARCH")
        candidate = f"/usr/lib/{multiarch}/xtables" if multiarch else ""
        if candidate and os.path.isdir(candidate):
            os.environ["XTABLES_LIBDIR"] = candidate
    # iptc asks distutils for get_python_lib (unused by the calls made here) and falls back to
    # sysconfig when distutils is missing; with setuptools installed, that import drags in
    # setuptools' vendored packages: ~6 MB of the agent's RSS for nothing. Hide it meanwhile.
    hidden = "distutils" not in sys.modules
    if hidden:
        sys.modules["distutils"] = None  # type: ignore[assignment]
    try:
        return importlib.import_module("iptc")
    finally:
        if hidden and sys.modules.get("distutils", 0) is None:
            del sys.modules["distutils"]


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns: {os.strerror(err)}")


@contextmanager
def _entered(path: str) -> Iterator[None]:
    """Run the body with this thread inside the netns at `path`, then switch back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise NetnsError(e.errno, f"cannot open network namespace {path}: {e.strerror}") from e
        try:
            # A wrong path must never turn into rewriting the node's own nat table.
            if NetnsId.of(path) == NetnsId.of("/proc/thread-self/ns/net"):
                raise RulesError(f"{path} is the agent's own network namespace")
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(target)
    finally:
        os.close(home)


def _save_tool(family: int) -> str:
    return "iptables-legacy-save" if family == 4 else "ip6tables-legacy-save"


def read_state(netns: str, *, table: str = TABLE, family: int = 4) -> NatState:
    """One whole table of `netns` (nat of IPv4 by default), parsed from ip[6]tables-legacy-save."""
    path = netns_path(netns)
    tool = _save_tool(family)
    try:
        done = subprocess.run(
            ["nsenter", f"--net={path}", tool, "-t", table],
            capture_output=True,
            text=True,
            timeout=SAVE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RulesError(f"{tool} in {path}: {e}") from e
    if done.returncode != 0:
        raise RulesError(f"{tool} -t {table} in {path}: {done.stderr.strip()}")
    return parse_save(done.stdout, table=table)


def _to_iptc(iptc: Any, spec: RuleSpec, family: int = 4) -> Any:
    if spec.unparsed:
        raise ValueError(f"cannot write an observed-only rule: {spec}")
    rule = iptc.Rule() if family == 4 else iptc.Rule6()
    if spec.source is not None:
        rule.src = spec.source
    if spec.destination is not None:
        rule.dst = spec.destination
    if spec.in_interface is not None:
        rule.in_interface = spec.in_interface
    if spec.out_interface is not None:
        rule.out_interface = spec.out_interface
    if spec.protocol is not None:
        rule.protocol = spec.protocol
    # Same match order as render_rule, so iptables-save prints what the plan says.
    if spec.mark is not None:
        rule.create_match("mark").mark = spec.mark
    if spec.ctstate is not None:
        rule.create_match("conntrack").ctstate = spec.ctstate
    if spec.dport is not None or spec.syn:
        proto = rule.create_match(spec.protocol)
        if spec.dport is not None:
            proto.dport = str(spec.dport)
        if spec.syn:
            proto.tcp_flags = list(SYN_FLAGS[1:])
    if spec.dports:
        rule.create_match("multiport").dports = ",".join(spec.dports)
    if spec.comment is not None:
        rule.create_match("comment").comment = spec.comment
    rule.target = iptc.Target(rule, spec.target)
    if spec.to_ports is not None:
        rule.target.to_ports = str(spec.to_ports)
    if spec.reject_with is not None:
        rule.target.reject_with = spec.reject_with
    return rule


def _open_table(iptc: Any, name: str, family: int) -> Any:
    cls = iptc.Table if family == 4 else iptc.Table6
    return cls(name, autocommit=False)


def _live_handles(iptc: Any, family: int) -> None:
    """Give every cached table of `family` a handle before any rule target is built.

    Building a target that is not ACCEPT/DROP/QUEUE/RETURN (a jump, REDIRECT, REJECT) makes
    python-iptables ask *every* table of the family whether a chain of that name exists, and it
    passes a freed handle (None) to libiptc, which crashes the process (SIGSEGV). A handle here
    only answers that question; with autocommit off nothing ever writes it.
    """
    probe = iptc.Rule() if family == 4 else iptc.Rule6()
    for cached in probe.tables:
        if cached._handle is None:
            cached.autocommit = False
            cached.refresh()


def _rewrite(observed: NatState, plan: NatPlan | None, *, table_name: str, family: int) -> None:
    """Make one table of the current netns hold exactly `plan` (None: nothing), in one commit."""
    iptc = _iptc()
    table = _open_table(iptc, table_name, family)
    table.refresh()
    _live_handles(iptc, family)
    try:
        wanted = {c.name: c for c in plan.chains} if plan else {}
        kept_jumps: set[RuleSpec] = set()
        for name, specs in observed.chains.items():
            if is_owned_chain(name) or not any(s.is_jump_to_owned for s in specs):
                continue
            chain = iptc.Chain(table, name)
            rules = chain.rules
            if len(rules) != len(specs):
                raise RulesError(f"nat chain {name} changed while nodemesh was applying rules")
            for spec, rule in zip(specs, rules, strict=True):
                if not spec.is_jump_to_owned:
                    continue
                if rule.target.name != spec.target:
                    raise RulesError(f"nat chain {name} changed while nodemesh was applying")
                if plan and spec in plan.jumps and spec not in kept_jumps:
                    kept_jumps.add(spec)
                else:
                    chain.delete_rule(rule)
        # Flush every owned chain before deleting any: they may jump into each other.
        for name in observed.chains:
            if is_owned_chain(name):
                table.flush_entries(name)
        for name in observed.chains:
            if is_owned_chain(name) and name not in wanted:
                table.delete_chain(name)
        for name, chain_plan in wanted.items():
            if not table.is_chain(name):
                table.create_chain(name)
            chain = iptc.Chain(table, name)
            for spec in chain_plan.rules:
                chain.append_rule(_to_iptc(iptc, spec, family))
        for jump in plan.jumps if plan else ():
            if jump not in kept_jumps:
                iptc.Chain(table, jump.chain).insert_rule(_to_iptc(iptc, jump, family))
        table.commit()
    except iptc.IPTCError as e:
        where = table_name if family == 4 else f"ip6 {table_name}"
        raise RulesError(f"{where} table: {e}") from e
    finally:
        # autocommit is off, so this drops the handle (and anything uncommitted) without
        # writing, and leaves a fresh one: a freed handle must never be left in the cache.
        try:
            table.refresh()
        except iptc.IPTCError:
            table.close()


def apply_plan(netns: str, plan: NatPlan) -> RuleDiff:
    """Make nodemesh's chains in `netns` match `plan`; return what was wrong before.

    When nothing differs nothing is written, so re-applying costs one read and leaves the
    kernel's table (and its counters) untouched.
    """
    path = netns_path(netns)
    with _LOCK:
        before = read_state(path, table=plan.table, family=plan.family)
        diff = diff_plan(plan, before)
        if not diff.in_sync:
            with _entered(path):
                _rewrite(before, plan, table_name=plan.table, family=plan.family)
        return diff


def remove_rules(netns: str, *, table: str = TABLE, family: int = 4) -> NatState:
    """Delete every nodemesh chain and every jump into one from one table; return what was
    removed."""
    path = netns_path(netns)
    with _LOCK:
        state = read_state(path, table=table, family=family)
        owned = state.owned()
        if owned.chains:
            with _entered(path):
                _rewrite(state, None, table_name=table, family=family)
        return owned


def inspect_rules(
    netns: str, *, everything: bool = False, table: str = TABLE, family: int = 4
) -> NatState:
    """The nodemesh chains and jumps in one table of `netns` (nat of IPv4 by default; the
    whole table with everything=True)."""
    state = read_state(netns_path(netns), table=table, family=family)
    return state if everything else state.owned()
