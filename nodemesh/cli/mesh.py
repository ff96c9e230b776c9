"""`nodemesh mesh enable|disable NAMESPACE`: the namespace label that meshes its pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from nodemesh.cli.target import (
    TargetError,
    TargetOptions,
    chosen_lab,
    kube_or_lab,
    target_options,
)
from nodemesh.lab.client import LabClient, LabRequestFailed, LabUnavailable
from nodemesh.lab.paths import LabPaths

LABEL = "nodemesh.io/mesh"


def _label_in_lab(paths: LabPaths, namespace: str, value: str | None) -> None:
    """Re-apply the lab's Namespace object with the label changed (the lab has no patch)."""
    path = paths.objects / "Namespace" / f"{namespace}.yaml"
    try:
        obj: dict[str, Any] = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TargetError(f"namespace {namespace!r} does not exist in lab {paths.name!r}") from None
    meta = obj.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    if value is None:
        labels.pop(LABEL, None)
    else:
        labels[LABEL] = value
    # What the user would have written: name, labels, annotations; the lab fills the rest.
    clean: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": labels},
    }
    if meta.get("annotations"):
        clean["metadata"]["annotations"] = meta["annotations"]
    try:
        LabClient(paths).call(
            {"op": "apply", "docs": [{"obj": clean, "index": 1}], "source": "nodemesh mesh"}
        )
    except (LabUnavailable, LabRequestFailed) as e:
        raise TargetError(str(e)) from None


def _label_in_cluster(target: TargetOptions, namespace: str, value: str | None) -> None:
    from kubernetes import client

    from nodemesh.cli.cluster import api_client

    api = api_client(target)
    try:
        client.CoreV1Api(api).patch_namespace(namespace, {"metadata": {"labels": {LABEL: value}}})
    except client.ApiException as e:
        if e.status == 404:
            raise TargetError(f"namespace {namespace!r} does not exist") from None
        raise TargetError(f"cannot label namespace {namespace!r}: {e.reason}") from None
    finally:
        api.close()


def _apply(target: TargetOptions, namespace: str, value: str | None) -> None:
    if kube_or_lab(target) == "lab":
        name = chosen_lab(target)
        paths = LabPaths(name)
        if not Path(paths.config).exists():
            raise TargetError(f"no lab named {name!r}")
        _label_in_lab(paths, namespace, value)
    else:
        _label_in_cluster(target, namespace, value)


@click.group()
def mesh() -> None:
    """Mesh or unmesh the pods of a namespace."""


@mesh.command()
@click.argument("namespace")
@target_options
def enable(namespace: str, target: TargetOptions) -> None:
    """Label NAMESPACE nodemesh.io/mesh=enabled: pods started from now on are meshed."""
    _apply(target, namespace, "enabled")
    click.echo(
        f"namespace {namespace} labelled {LABEL}=enabled; restart its pods to mesh running ones "
        f"(kubectl rollout restart deploy -n {namespace})"
    )


@mesh.command()
@click.argument("namespace")
@target_options
def disable(namespace: str, target: TargetOptions) -> None:
    """Remove the nodemesh.io/mesh label of NAMESPACE: new pods start unmeshed."""
    _apply(target, namespace, None)
    click.echo(f"namespace {namespace}: label {LABEL} removed; restart its pods to unmesh them")
