"""Who may tap and read stats on a cluster: the ClusterRoles the public API's
SubjectAccessReviews are answered from (nodemesh.access), and the dashboard's grant of both."""

from __future__ import annotations

from nodemesh.access import DASHBOARD_ROLES, ROLES
from nodemesh.cli.install.meta import Obj, metadata
from nodemesh.cli.install.values import InstallValues

RBAC = "rbac.authorization.k8s.io/v1"


def role_name(values: InstallValues, role: str) -> str:
    """nodemesh-tap and nodemesh-stats, named after the install's namespace."""
    return values.namespace + role.removeprefix("nodemesh")


def objects(values: InstallValues) -> list[Obj]:
    out: list[Obj] = [
        {
            "apiVersion": RBAC,
            "kind": "ClusterRole",
            "metadata": metadata(values, "controlplane", role_name(values, role), namespaced=False),
            "rules": [rule.as_dict() for rule in rules],
        }
        for role, rules in ROLES.items()
    ]
    # The dashboard answers anyone who reaches it with its own ServiceAccount's rights, as
    # Linkerd viz's web does (docs/security.md): whoever can port-forward to it sees everything.
    dashboard = {
        "kind": "ServiceAccount",
        "name": "nodemesh-dashboard",
        "namespace": values.namespace,
    }
    for role in DASHBOARD_ROLES:
        name = f"{role_name(values, role)}-dashboard"
        out.append(
            {
                "apiVersion": RBAC,
                "kind": "ClusterRoleBinding",
                "metadata": metadata(values, "dashboard", name, namespaced=False),
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role_name(values, role),
                },
                "subjects": [dashboard],
            }
        )
    return out
