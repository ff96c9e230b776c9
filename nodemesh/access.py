"""Who may tap and read stats: the SubjectAccessReview shapes the public API asks about and the
RBAC roles that grant them, shared by `nodemesh install` (ClusterRoles), the lab (its grant
table) and the control plane (the lab's review backend) so all three mean the same thing (sans-io).

- Tap: verb `watch`, group `tap.nodemesh.io`, resource `<kind plural>/tap`, the tapped
  resource's namespace and name (for a namespace, its own name is the namespace), as Linkerd's
  tap asks through its aggregated API (`tap.linkerd.io`, `watch`, `deployments/tap`).
- Stats (stat, top's and edges' figures, workload and node lists): verb `list`, group
  `stats.nodemesh.io`, resource = the kind asked about (`deployments`, `pods`, `services`,
  `namespaces`, `nodes`, `edges`, `workloads`), the namespace asked about ("" = all namespaces).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TAP_GROUP = "tap.nodemesh.io"
STATS_GROUP = "stats.nodemesh.io"
TAP_VERB = "watch"
STATS_VERB = "list"
CLUSTER_SCOPED = ("namespaces", "nodes")

TAP_ROLE = "nodemesh-tap"
STATS_ROLE = "nodemesh-stats"


@dataclass(frozen=True)
class ResourceAttributes:
    """The `resourceAttributes` of a SubjectAccessReview."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    def describe(self) -> str:
        what = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        text = f"{self.verb} {what}.{self.group}"
        if self.name:
            text += f" {self.name!r}"
        if self.resource in CLUSTER_SCOPED:
            return text
        return text + (f" in namespace {self.namespace!r}" if self.namespace else " cluster-wide")


def tap_attributes(plural: str, *, namespace: str, name: str) -> ResourceAttributes:
    if plural == "namespaces":
        namespace = name
    elif plural in CLUSTER_SCOPED:
        namespace = ""
    return ResourceAttributes(TAP_VERB, TAP_GROUP, plural, "tap", namespace, name)


def stats_attributes(resource: str, *, namespace: str) -> ResourceAttributes:
    return ResourceAttributes(STATS_VERB, STATS_GROUP, resource, "", namespace)


@dataclass(frozen=True)
class Rule:
    """One RBAC PolicyRule (resource rules only)."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    resource_names: tuple[str, ...] = ()

    def allows(self, attrs: ResourceAttributes) -> bool:
        full = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
        return (
            _has(self.verbs, attrs.verb)
            and _has(self.api_groups, attrs.group)
            and ("*" in self.resources or full in self.resources)
            and (not self.resource_names or attrs.name in self.resource_names)
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }
        if self.resource_names:
            out["resourceNames"] = list(self.resource_names)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rule:
        def strings(key: str) -> tuple[str, ...]:
            value = d.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"rule {key} must be a list of strings, not {value!r}")
            return tuple(value)

        return cls(strings("apiGroups"), strings("resources"), strings("verbs"),
                   strings("resourceNames"))  # fmt: skip


def _has(values: Iterable[str], wanted: str) -> bool:
    return any(v == "*" or v == wanted for v in values)


TAP_RESOURCES = ("deployments", "pods", "services", "namespaces", "nodes")
STATS_RESOURCES = (*TAP_RESOURCES, "edges", "workloads")

# The ClusterRoles `nodemesh install` renders and the lab grants (named, never "*").
ROLES: dict[str, tuple[Rule, ...]] = {
    TAP_ROLE: (Rule((TAP_GROUP,), tuple(f"{r}/tap" for r in TAP_RESOURCES), (TAP_VERB,)),),
    STATS_ROLE: (Rule((STATS_GROUP,), STATS_RESOURCES, ("get", STATS_VERB)),),
}
# The dashboard's own ServiceAccount reads everything and taps everything (as Linkerd viz's web).
DASHBOARD_ROLES = (TAP_ROLE, STATS_ROLE)
