"""Metadata, labels and container security settings every rendered object shares."""

from __future__ import annotations

from typing import Any

from nodemesh.cli.install.values import InstallValues

Obj = dict[str, Any]
PART_OF = "nodemesh"


def labels(values: InstallValues, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": f"nodemesh-{component}",
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/version": values.version,
    }


def selector(component: str) -> dict[str, str]:
    # Selectors must not change between versions: only the name label, never the version.
    return {"app.kubernetes.io/name": f"nodemesh-{component}"}


def metadata(values: InstallValues, component: str, name: str, *, namespaced: bool = True) -> Obj:
    meta: Obj = {"name": name}
    if namespaced:
        meta["namespace"] = values.namespace
    meta["labels"] = labels(values, component)
    return meta


def locked_down(*, user: int = 2103) -> Obj:
    """A container that needs nothing from the node: no capabilities, no writes, no root."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def service_account(values: InstallValues, component: str, *, automount: bool) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(values, component, f"nodemesh-{component}"),
        "automountServiceAccountToken": automount,
    }


def http_probe(path: str, port: int, *, period: int, failures: int = 3) -> Obj:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def pdb(values: InstallValues, component: str, *, replicas: int) -> Obj:
    # One replica: allow its eviction (drains must not hang); several: keep a majority.
    budget: Obj = {"maxUnavailable": 1} if replicas == 1 else {"minAvailable": replicas // 2 + 1}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(values, component, f"nodemesh-{component}"),
        "spec": {**budget, "selector": {"matchLabels": selector(component)}},
    }


def spread(component: str) -> Obj:
    """Replicas of one component on different nodes when it can be done."""
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": selector(component)},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }
