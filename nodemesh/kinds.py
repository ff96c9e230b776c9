"""Resource kinds, named once: the canonical kinds the public API speaks (deployment, pod,
namespace, service, node), the aliases users type (deploy, po, ns, svc, no, plurals) and the
short names tables print. Shared by the control plane, its telemetry queries and the CLI."""

from __future__ import annotations

KINDS: tuple[str, ...] = ("deployment", "pod", "namespace", "service", "node")
SHORT: dict[str, str] = {
    "deployment": "deploy", "pod": "pod", "namespace": "ns", "service": "svc", "node": "node",
}  # fmt: skip
CLUSTER_SCOPED: tuple[str, ...] = ("namespace", "node")

KIND_ALIASES: dict[str, str] = {
    alias: kind
    for kind, aliases in {
        "deployment": ("deploy", "deployment", "deployments"),
        "pod": ("po", "pod", "pods"),
        "namespace": ("ns", "namespace", "namespaces"),
        "service": ("svc", "service", "services"),
        "node": ("no", "node", "nodes"),
    }.items()
    for alias in aliases
}
KNOWN = ", ".join(SHORT.values())  # for messages: "deploy, pod, ns, svc, node"


class UnknownKind(ValueError):
    """A resource kind that is none of the known ones or their aliases."""


def canonical(kind: str) -> str:
    """The canonical kind of `kind` (any alias, any case), or UnknownKind naming the known."""
    try:
        return KIND_ALIASES[kind.strip().lower()]
    except KeyError:
        raise UnknownKind(f"unknown resource kind {kind!r}; use one of {KNOWN}") from None
