"""Resource kinds as users and clients name them (deploy, po, ns, svc, no and long forms),
mapped to the canonical kinds the public API speaks. Shared by the control plane and the CLI."""

from __future__ import annotations

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
