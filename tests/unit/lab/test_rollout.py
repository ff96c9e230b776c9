"""The lab's DaemonSet controller decisions (nodemesh.lab.rollout): what a rolling update with
surge does on each node, step by step, and clear errors for strategies it cannot follow."""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh.lab.manifests import ManifestError, parse
from nodemesh.lab.rollout import DsPod, Plan, Strategy, plan, strategy_of

SURGE = Strategy("RollingUpdate", max_surge=1, max_unavailable=0)
NODES = ["node1", "node2"]


def ds(update: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"template": {}}
    if update is not None:
        spec["updateStrategy"] = update
    return {"metadata": {"name": "agent", "namespace": "nodemesh"}, "spec": spec}


def test_with_surge_the_new_pod_starts_beside_the_old_one_which_goes_once_it_is_ready() -> None:
    old = [DsPod("a-1", "node1", "r1", True, "t1"), DsPod("a-2", "node2", "r1", True, "t1")]
    # Step 1: one node at a time gets a new pod; nothing is deleted yet.
    step = plan(revision="r2", nodes=NODES, pods=old, strategy=SURGE)
    assert step == Plan(create=["node1"], delete=[])
    # Step 2: the new pod is not Ready yet: wait, both keep running, no second node starts.
    starting = [*old, DsPod("a-3", "node1", "r2", False, "t2")]
    assert plan(revision="r2", nodes=NODES, pods=starting, strategy=SURGE) == Plan()
    # Step 3: Ready: the old pod of that node goes and the next node gets its new pod.
    ready = [*old, DsPod("a-3", "node1", "r2", True, "t2")]
    assert plan(revision="r2", nodes=NODES, pods=ready, strategy=SURGE) == Plan(
        create=["node2"], delete=["a-1"]
    )


def test_without_surge_the_old_pod_goes_first() -> None:
    old = [DsPod("a-1", "node1", "r1", True), DsPod("a-2", "node2", "r1", True)]
    step = plan(revision="r2", nodes=NODES, pods=old, strategy=Strategy("RollingUpdate", 0, 1))
    assert step == Plan(create=[], delete=["a-1"])
    after = [DsPod("a-2", "node2", "r1", True)]
    step = plan(revision="r2", nodes=NODES, pods=after, strategy=Strategy("RollingUpdate", 0, 1))
    assert step == Plan(create=["node1"], delete=[])  # node2 waits: node1 is unavailable


def test_on_delete_replaces_nothing_and_missing_nodes_get_a_pod() -> None:
    pods = [DsPod("a-1", "node1", "r1", True)]
    assert plan(revision="r2", nodes=NODES, pods=pods, strategy=Strategy("OnDelete")) == Plan(
        create=["node2"]
    )


def test_pods_on_nodes_no_longer_selected_go() -> None:
    pods = [DsPod("a-1", "node1", "r1", True), DsPod("a-9", "node9", "r1", True)]
    assert plan(revision="r1", nodes=NODES, pods=pods, strategy=SURGE).delete == ["a-9"]


@pytest.mark.parametrize(
    ("update", "expected"),
    [
        (None, Strategy("RollingUpdate", 0, 1)),
        ({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, SURGE),
        ({"rollingUpdate": {"maxSurge": "50%"}}, Strategy("RollingUpdate", 2, 0)),
        ({"rollingUpdate": {"maxUnavailable": "10%"}}, Strategy("RollingUpdate", 0, 1)),
        ({"type": "OnDelete"}, Strategy("OnDelete")),
    ],
)
def test_strategies(update: Any, expected: Strategy) -> None:
    assert strategy_of(ds(update), 3) == expected


@pytest.mark.parametrize(
    ("update", "problem"),
    [
        ({"type": "Recreate"}, "updateStrategy.type 'Recreate'"),
        ({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}, "may not both be 0"),
        ({"rollingUpdate": {"maxSurge": "lots"}}, "maxSurge: 'lots' is not"),
        ({"rollingUpdate": {"maxUnavailable": -1}}, "maxUnavailable: -1 is not"),
        ({"rollingUpdate": "fast"}, "rollingUpdate: must be a mapping"),
    ],
)
def test_bad_strategies_are_named_at_apply(update: Any, problem: str) -> None:
    import yaml

    doc = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "a"}},
            "updateStrategy": update,
            "template": {
                "metadata": {"labels": {"app": "a"}},
                "spec": {"containers": [{"name": "c", "command": ["true"]}]},
            },
        },
    }
    with pytest.raises(ManifestError) as err:
        parse(yaml.safe_dump(doc), source="ds.yml")
    assert "ds.yml: document 1 (DaemonSet agent): spec.updateStrategy" in str(err.value)
    assert problem in str(err.value)
