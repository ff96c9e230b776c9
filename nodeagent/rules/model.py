"""The data a rule plan is made of: one rule, one chain, one table's plan, an observed table,
and the whole plan of a pod (IPv4 nat, IPv4 filter, IPv6 filter).

A rule is described by the few fields nodemesh uses. `render_rule` prints it exactly as
iptables-legacy-save prints the same rule, so a planned rule and an observed one can be compared
as data (after parsing) or as text.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

TABLE = "nat"
# Every chain nodemesh owns starts with this; anything else in the table belongs to someone else.
OWNED_PREFIX = "NODEMESH_"
OUTPUT_CHAIN = "NODEMESH_OUTPUT"
PREROUTING_CHAIN = "NODEMESH_PREROUTING"
INPUT_CHAIN = "NODEMESH_INPUT"
BUILTIN_CHAINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
# Built-in chains per table, in the order iptables-save prints them.
TABLE_BUILTINS = {
    "nat": BUILTIN_CHAINS,
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
}
# Targets whose options are kept as words (`target_args`) rather than as fields of their own.
WORD_TARGETS = frozenset({"CONNMARK", "MARK"})
FAMILIES = (4, 6)
# The kernel limit is 29 characters plus NUL (XT_EXTENSION_MAXNAMELEN); keep a margin.
MAX_CHAIN_NAME = 28


def is_owned_chain(name: str) -> bool:
    return name.startswith(OWNED_PREFIX)


@dataclass(frozen=True)
class RuleSpec:
    """One iptables rule, restricted to the matches and targets nodemesh plans.

    Matches are rendered in a fixed order (mark, connmark, state, port, comment) and written in
    the same order, so iptables-save shows them the way `render_rule` does. The options of a
    CONNMARK or MARK target are kept as iptables-save prints them (`target_args`). `unparsed`
    holds whatever an observed rule carries beyond these fields: when set it holds the observed
    rule's words (everything after the chain name) and the other fields are left empty, so it
    never equals a planned rule.
    """

    chain: str
    target: str
    protocol: str | None = None
    source: str | None = None
    destination: str | None = None
    in_interface: str | None = None
    out_interface: str | None = None
    mark: str | None = None
    connmark: str | None = None
    ctstate: str | None = None
    dport: int | None = None
    # Only a connection's first packet (SYN without ACK): a REDIRECT installed in a running pod
    # must leave its established connections alone. Their packets are new to conntrack there
    # (a netns tracks nothing before its first nat rule), and redirected mid-stream they would
    # be reset by the agent's listener.
    syn: bool = False
    dports: tuple[str, ...] = ()
    to_ports: int | None = None
    reject_with: str | None = None
    target_args: tuple[str, ...] = ()
    comment: str | None = None
    unparsed: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for key in ("source", "destination"):
            value = getattr(self, key)
            if value is not None:
                net = ipaddress.ip_network(value, strict=False)
                object.__setattr__(self, key, net.with_prefixlen)
        if (self.dport is not None or self.dports) and self.protocol not in ("tcp", "udp"):
            raise ValueError(f"a port match needs -p tcp or -p udp, not {self.protocol!r}")
        if self.syn and self.protocol != "tcp":
            raise ValueError(f"a SYN match needs -p tcp, not {self.protocol!r}")
        if self.comment is not None and any(c in self.comment for c in "\"'\\"):
            raise ValueError("comments with quotes or backslashes are not supported")
        if self.target_args and self.target not in WORD_TARGETS:
            raise ValueError(f"target options are kept as words only for {sorted(WORD_TARGETS)}")

    @property
    def is_jump_to_owned(self) -> bool:
        return is_owned_chain(self.target)


SYN_FLAGS = ("--tcp-flags", "FIN,SYN,RST,ACK", "SYN")  # `--syn`, as iptables-save prints it


def _quote_comment(comment: str) -> str:
    # libxtables' xtables_save_string leaves a value bare only when it is all [A-Za-z0-9_-].
    if comment and all((c.isascii() and c.isalnum()) or c in "_-" for c in comment):
        return comment
    return f'"{comment}"'


def quote_word(word: str) -> str:
    """A word as iptables-save prints it and iptables-restore reads it back: bare, or in double
    quotes with `"` and `\\` escaped (restore knows no single quotes)."""
    if word and not any(c.isspace() or c in "\"'\\" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_rule(rule: RuleSpec, command: str = "-A") -> str:
    """The rule as an `-A CHAIN ...` line, in iptables-save's own word order (`command` "-D"
    gives the line that deletes it inside an iptables-restore transaction)."""
    if rule.unparsed:
        return " ".join([command, rule.chain, *map(quote_word, rule.unparsed)])
    words = [command, rule.chain]
    if rule.source is not None:
        words += ["-s", rule.source]
    if rule.destination is not None:
        words += ["-d", rule.destination]
    if rule.in_interface is not None:
        words += ["-i", rule.in_interface]
    if rule.out_interface is not None:
        words += ["-o", rule.out_interface]
    if rule.protocol is not None:
        words += ["-p", rule.protocol]
    if rule.mark is not None:
        words += ["-m", "mark", "--mark", rule.mark]
    if rule.connmark is not None:
        words += ["-m", "connmark", "--mark", rule.connmark]
    if rule.ctstate is not None:
        words += ["-m", "conntrack", "--ctstate", rule.ctstate]
    if rule.dport is not None or rule.syn:
        words += ["-m", rule.protocol or ""]
    if rule.dport is not None:
        words += ["--dport", str(rule.dport)]
    if rule.syn:
        words += [*SYN_FLAGS]
    if rule.dports:
        words += ["-m", "multiport", "--dports", ",".join(rule.dports)]
    if rule.comment is not None:
        words += ["-m", "comment", "--comment", _quote_comment(rule.comment)]
    words += ["-j", rule.target]
    if rule.to_ports is not None:
        words += ["--to-ports", str(rule.to_ports)]
    if rule.reject_with is not None:
        words += ["--reject-with", rule.reject_with]
    words += rule.target_args
    return " ".join(words)


@dataclass(frozen=True)
class ChainPlan:
    """One nodemesh-owned chain and its rules, in order."""

    name: str
    rules: tuple[RuleSpec, ...]

    def __post_init__(self) -> None:
        if not is_owned_chain(self.name) or len(self.name) > MAX_CHAIN_NAME:
            raise ValueError(f"bad nodemesh chain name {self.name!r}")
        for rule in self.rules:
            if rule.chain != self.name:
                raise ValueError(f"rule for {rule.chain} listed under {self.name}")


@dataclass(frozen=True)
class NatPlan:
    """Everything nodemesh wants in one table of a pod netns (the nat table of IPv4 unless
    `table`/`family` say otherwise; the name stayed from when nat was the only one).

    `jumps` are the rules in built-in chains that send traffic into nodemesh's chains; each goes
    first in its built-in chain and exists exactly once. A plan with no chains means "nothing
    of nodemesh's in this table": applying it removes whatever nodemesh left there.
    """

    chains: tuple[ChainPlan, ...]
    jumps: tuple[RuleSpec, ...]
    table: str = TABLE
    family: int = 4

    def __post_init__(self) -> None:
        if self.table not in TABLE_BUILTINS or self.family not in FAMILIES:
            raise ValueError(f"no plans for table {self.table!r} of IPv{self.family}")
        names = {c.name for c in self.chains}
        for jump in self.jumps:
            if jump.chain not in TABLE_BUILTINS[self.table] or jump.target not in names:
                raise ValueError(f"jump {render_rule(jump)!r} does not join a built-in chain")

    @property
    def where(self) -> str:
        """`nat`, `filter`, `ip6 filter`: how logs and diffs name the table."""
        return self.table if self.family == 4 else f"ip6 {self.table}"

    def chain(self, name: str) -> ChainPlan:
        for c in self.chains:
            if c.name == name:
                return c
        raise KeyError(name)

    def rules(self) -> Iterator[RuleSpec]:
        """Every rule of the plan, jumps first."""
        yield from self.jumps
        for c in self.chains:
            yield from c.rules


@dataclass(frozen=True)
class NatState:
    """The nat table as observed: chain name -> its rules in order (built-in chains included)."""

    chains: Mapping[str, tuple[RuleSpec, ...]]

    def owned(self) -> NatState:
        """Only what nodemesh owns: its chains and the jumps into them from built-in chains."""
        kept: dict[str, tuple[RuleSpec, ...]] = {}
        for name, rules in self.chains.items():
            if is_owned_chain(name):
                kept[name] = rules
            else:
                jumps = tuple(r for r in rules if r.is_jump_to_owned)
                if jumps:
                    kept[name] = jumps
        return NatState(kept)

    def rule_count(self) -> int:
        return sum(len(rules) for rules in self.chains.values())


@dataclass(frozen=True)
class PodPlan:
    """All of nodemesh's netfilter rules for one pod: every table it may write, always listed
    (an empty one removes leftovers), so applying and removing cover the same tables."""

    nat: NatPlan
    filter4: NatPlan
    filter6: NatPlan

    def __post_init__(self) -> None:
        wanted = (("nat", 4), ("filter", 4), ("filter", 6))
        got = tuple((p.table, p.family) for p in self.tables())
        if got != wanted:
            raise ValueError(f"a pod plan holds {wanted}, not {got}")

    def tables(self) -> tuple[NatPlan, ...]:
        return (self.nat, self.filter4, self.filter6)

    def rules(self) -> Iterator[RuleSpec]:
        for plan in self.tables():
            yield from plan.rules()
