"""The DaemonSet controller's decisions, without I/O: which nodes get a new pod, which pods go.

As Kubernetes does it: each pod carries the `controller-revision-hash` of the template it was
made from; `RollingUpdate` with `maxSurge` starts the new pod beside the old one on a node and
deletes the old one once the new one is Ready (at most maxSurge nodes at a time); without surge
it deletes up to `maxUnavailable` old pods first and the new ones follow; `OnDelete` replaces
nothing until someone deletes a pod.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

REVISION_LABEL = "controller-revision-hash"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


class StrategyError(ValueError):
    """An updateStrategy the lab cannot follow (named in the message)."""


@dataclass(frozen=True)
class Strategy:
    kind: str  # RollingUpdate | OnDelete
    max_surge: int = 0
    max_unavailable: int = 1


@dataclass(frozen=True)
class DsPod:
    name: str
    node: str
    revision: str
    ready: bool
    created: str = ""


@dataclass
class Plan:
    create: list[str] = field(default_factory=list)  # node names
    delete: list[str] = field(default_factory=list)  # pod names


def _count(value: Any, nodes: int, *, round_up: bool, what: str) -> int:
    if isinstance(value, bool):
        raise StrategyError(f"{what}: {value!r} is not a number or a percentage")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        share = int(value[:-1]) * nodes / 100
        return math.ceil(share) if round_up else math.floor(share)
    raise StrategyError(f"{what}: {value!r} is not a non-negative number or a percentage")


def strategy_of(ds: dict[str, Any], nodes: int) -> Strategy:
    where = f"DaemonSet {ds['metadata'].get('namespace', '')}/{ds['metadata']['name']}"
    spec = ds["spec"].get("updateStrategy") or {}
    kind = spec.get("type", "RollingUpdate")
    if kind == "OnDelete":
        return Strategy("OnDelete")
    if kind != "RollingUpdate":
        raise StrategyError(f"{where}: updateStrategy.type {kind!r} (RollingUpdate or OnDelete)")
    rolling = spec.get("rollingUpdate") or {}
    raw_surge = rolling.get("maxSurge", 0)
    raw_unavailable = rolling.get("maxUnavailable", 1 if raw_surge in (0, "0%") else 0)
    surge = _count(raw_surge, nodes, round_up=True, what=f"{where}: maxSurge")
    unavailable = _count(raw_unavailable, nodes, round_up=False, what=f"{where}: maxUnavailable")
    if raw_surge in (0, "0%") and raw_unavailable in (0, "0%"):
        # As the API server says: the rollout could never make progress.
        raise StrategyError(f"{where}: maxSurge and maxUnavailable may not both be 0")
    if surge == 0 and unavailable == 0:
        unavailable = 1  # a percentage that rounds down to nothing still lets one node go
    return Strategy("RollingUpdate", max_surge=surge, max_unavailable=unavailable)


def plan(*, revision: str, nodes: Iterable[str], pods: Iterable[DsPod], strategy: Strategy) -> Plan:
    """One reconcile pass of one DaemonSet over the nodes it should run on."""
    out = Plan()
    wanted = list(nodes)
    by_node: dict[str, list[DsPod]] = {n: [] for n in wanted}
    for p in pods:
        if p.node in by_node:
            by_node[p.node].append(p)
        else:
            out.delete.append(p.name)  # a node it no longer selects
    surging = 0
    unavailable = 0
    todo: list[str] = []
    for node in wanted:
        here = by_node[node]
        new = sorted(
            (p for p in here if p.revision == revision),
            key=lambda p: (not p.ready, p.created),
        )
        old = [p for p in here if p.revision != revision]
        # Two new pods on one node: keep the best (ready, oldest).
        out.delete += [p.name for p in new[1:]]
        if not here:
            out.create.append(node)
            unavailable += 1
            continue
        if not any(p.ready for p in here):
            unavailable += 1
        if not old:
            continue
        if strategy.kind == "OnDelete":
            continue
        if new and new[0].ready:
            out.delete += [p.name for p in old]  # the new one is serving: the old ones go
        elif new:
            surging += 1  # waiting for the new one to become Ready
        else:
            todo.append(node)
    for node in todo:
        old = [p for p in by_node[node] if p.revision != revision]
        if strategy.max_surge > 0 and surging < strategy.max_surge:
            out.create.append(node)
            surging += 1
        elif strategy.max_surge == 0 and unavailable < strategy.max_unavailable:
            out.delete += [p.name for p in old]
            if any(p.ready for p in old):
                unavailable += 1
    return out
