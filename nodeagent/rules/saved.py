"""The plan as iptables-restore text, and iptables-save text parsed back into rules.

The text is shaped like `iptables-legacy-save -t nat` output once `normalise_save` has dropped
what changes from run to run (timestamps, counters, built-in chain policies), so the golden file,
a freshly enrolled pod's table and the plan compare as plain strings.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from nodeagent.rules.model import (
    BUILTIN_CHAINS,
    SYN_FLAGS,
    TABLE,
    TABLE_BUILTINS,
    WORD_TARGETS,
    NatPlan,
    NatState,
    PodPlan,
    RuleSpec,
    render_rule,
)

_COUNTERS = re.compile(r"^\[\d+:\d+\]\s+")


def render_restore(plan: NatPlan) -> str:
    """The plan as `iptables-restore` text, in the order iptables-legacy-save prints a table.

    libiptc lists built-in chains in hook order and user chains sorted by name, and prints the
    rules chain by chain in that order. Feeding this to `iptables-restore --noflush` is a first
    install only: the jump lines append, so a second feed would duplicate them (`restore.py`
    writes what a table lacks, idempotently).
    """
    lines = [f"*{plan.table}"]
    chains = sorted(plan.chains, key=lambda c: c.name)
    lines += [f":{c.name} - [0:0]" for c in chains]
    for builtin in TABLE_BUILTINS[plan.table]:
        lines += [render_rule(j) for j in plan.jumps if j.chain == builtin]
    for c in chains:
        lines += [render_rule(r) for r in c.rules]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_pod_plan(plan: PodPlan) -> str:
    """Every table of a pod's plan, each headed by the command that would load it."""
    out = []
    for table in plan.tables():
        tool = "iptables-legacy-restore" if table.family == 4 else "ip6tables-legacy-restore"
        out.append(f"# {tool} --noflush\n{render_restore(table)}")
    return "".join(out)


def normalise_save(text: str) -> str:
    """`iptables-save` output without comments, counters and built-in chain policy lines."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name in BUILTIN_CHAINS or name == "FORWARD":
                continue
            line = f":{name} - [0:0]"
        out.append(_COUNTERS.sub("", line))
    return "\n".join(out) + "\n"


def parse_tables(text: str) -> dict[str, NatState]:
    """Parse `iptables-save` text (with or without -c counters) of any number of tables."""
    tables: dict[str, dict[str, list[RuleSpec]]] = {}
    chains: dict[str, list[RuleSpec]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            chains = tables.setdefault(line[1:], {})
        elif chains is None:
            continue  # before the first table: not iptables-save's own text
        elif line.startswith(":"):
            chains.setdefault(line[1:].split()[0], [])
        elif line != "COMMIT":
            rule = parse_rule(_COUNTERS.sub("", line))
            chains.setdefault(rule.chain, []).append(rule)
    return {
        table: NatState({name: tuple(rules) for name, rules in chains.items()})
        for table, chains in tables.items()
    }


def parse_save(text: str, *, table: str = TABLE) -> NatState:
    """One table of `iptables-save` text (empty when the text does not hold it)."""
    return parse_tables(text).get(table, NatState({}))


class _Unknown(ValueError):
    pass


# Options nodemesh plans, each taking exactly one value: (current -m match, option) -> field.
_OPTIONS = {
    (None, "-s"): "source",
    (None, "-d"): "destination",
    (None, "-i"): "in_interface",
    (None, "-o"): "out_interface",
    (None, "-p"): "protocol",
    ("mark", "--mark"): "mark",
    ("connmark", "--mark"): "connmark",
    ("conntrack", "--ctstate"): "ctstate",
    ("tcp", "--dport"): "dport",
    ("udp", "--dport"): "dport",
    ("multiport", "--dports"): "dports",
    ("comment", "--comment"): "comment",
}
_MATCHES = {m for m, _ in _OPTIONS if m is not None}
# A target's own option, each taking one value; other targets' options stay words.
_TARGET_OPTIONS = {"--to-ports": "to_ports", "--reject-with": "reject_with"}


def parse_rule(line: str) -> RuleSpec:
    """Parse one `-A CHAIN ...` line (as iptables-save prints it)."""
    words = shlex.split(line)
    if len(words) < 2 or words[0] != "-A":
        raise ValueError(f"not an iptables-save rule line: {line!r}")
    return parse_words(words[1], words[2:])


def parse_words(chain: str, body: list[str]) -> RuleSpec:
    """Turn a rule's words into a RuleSpec.

    A rule nodemesh could not have written (other matches, negations, another word order) comes
    back with its words in `unparsed`, so it never equals a planned rule but still names its
    target: a stray jump into a nodemesh chain is recognised as nodemesh's to clean up.
    """
    target = body[body.index("-j") + 1] if "-j" in body[:-1] else ""
    try:
        spec = _parse_known(chain, body)
    except (_Unknown, ValueError):
        spec = None
    # Round trip: the fields must say exactly what the words say, in iptables-save's order.
    if spec is None or shlex.split(render_rule(spec))[2:] != body:
        return RuleSpec(chain=chain, target=target, unparsed=tuple(body))
    return spec


def _parse_known(chain: str, body: list[str]) -> RuleSpec:
    if "-j" not in body[:-1]:
        raise _Unknown("no target")
    at = body.index("-j")
    head, target, tail = body[:at], body[at + 1], body[at + 2 :]
    fields: dict[str, Any] = {"target": target}
    match: str | None = None
    flags = len(SYN_FLAGS)
    for i in range(len(head) - flags + 1):  # the one option with two values: `--syn`
        if tuple(head[i : i + flags]) == SYN_FLAGS:
            fields["syn"] = True
            head = head[:i] + head[i + flags :]
            break
    if len(head) % 2:
        raise _Unknown(head)
    for word, value in zip(head[::2], head[1::2], strict=True):
        if word == "-m" and value in _MATCHES:
            match = value
        elif (key := _OPTIONS.get((match, word))) is not None and key not in fields:
            fields[key] = value
        else:
            raise _Unknown(word)
    if len(tail) == 2 and tail[0] in _TARGET_OPTIONS:
        fields[_TARGET_OPTIONS[tail[0]]] = tail[1]
    elif tail and target in WORD_TARGETS:
        fields["target_args"] = tuple(tail)
    elif tail:
        raise _Unknown(tail)
    for key in ("dport", "to_ports"):
        if key in fields:
            fields[key] = int(fields[key])
    if "dports" in fields:
        fields["dports"] = tuple(fields["dports"].split(","))
    return RuleSpec(chain=chain, **fields)
