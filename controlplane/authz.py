"""Authorization policies compiled per node (sans-io): each InboundPolicy the index holds,
matched against the meshed pods of one node, becomes the `Policy` that node's agent enforces.
A node none of whose pods a policy selects never hears of that policy."""

from __future__ import annotations

from nodemesh import authz
from nodemesh.model import PodInfo


def enforced_on(pod: PodInfo) -> bool:
    """Pods whose inbound traffic an agent handles: meshed, own network namespace, running."""
    return pod.mesh.meshed and not pod.host_network and pod.phase not in ("Succeeded", "Failed")


def node_view(
    policies: dict[authz.PolicyKey, authz.Spec], pods: list[PodInfo], *, trust_domain: str
) -> dict[authz.PolicyKey, authz.Policy]:
    """The compiled policies of one node, given the node's pods."""
    out: dict[authz.PolicyKey, authz.Policy] = {}
    live = [p for p in pods if enforced_on(p)]
    for key, spec in sorted(policies.items(), key=lambda kv: (kv[0].namespace, kv[0].name)):
        selected = [
            p.key
            for p in live
            if p.key.namespace == key.namespace and authz.selects(spec.selector, p.labels)
        ]
        if selected:
            out[key] = authz.compile_policy(key, spec, pods=selected, trust_domain=trust_domain)
    return out


def diff(
    before: dict[authz.PolicyKey, authz.Policy], after: dict[authz.PolicyKey, authz.Policy]
) -> tuple[list[authz.Policy], list[authz.PolicyKey]]:
    """(updated, removed) that turn `before` into `after`."""
    updated = [p for k, p in after.items() if before.get(k) != p]
    removed = [k for k in before if k not in after]
    return updated, removed
