"""Kubernetes-shaped objects as the lab writes them, and a writer for a lab-like state directory."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
_uids = itertools.count(1)


def _meta(name: str, namespace: str | None = None, **extra: Any) -> Obj:
    m: Obj = {"name": name, "uid": f"uid-{next(_uids)}", "resourceVersion": "1"}
    if namespace:
        m["namespace"] = namespace
    m.update({k: v for k, v in extra.items() if v is not None})
    return m


def namespace(name: str, *, meshed: bool = True, annotations: dict[str, str] | None = None) -> Obj:
    labels = {"nodemesh.io/mesh": "enabled"} if meshed else {}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": _meta(name, labels=labels, annotations=annotations),
    }


def node(n: int) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": _meta(f"node{n}"),
        "spec": {"podCIDR": f"10.244.{n}.0/24"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": f"172.18.0.{n}"}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def deployment(ns: str, name: str, *, replicas: int = 1, sa: str = "default") -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, ns),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"serviceAccountName": sa}},
        },
    }


def _owner(kind: str, name: str) -> Obj:
    api = "v1" if kind == "Pod" else "apps/v1"
    return {"apiVersion": api, "kind": kind, "name": name, "uid": f"uid-{name}", "controller": True}


def replicaset(ns: str, name: str, *, deployment: str | None) -> Obj:
    owners = [_owner("Deployment", deployment)] if deployment else None
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": _meta(name, ns, ownerReferences=owners),
        "spec": {"replicas": 1},
    }


def pod(
    ns: str,
    name: str,
    *,
    node: str,
    ip: str,
    owner: tuple[str, str] | None = None,
    sa: str = "default",
    ready: bool = True,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    host_network: bool = False,
) -> Obj:
    owners = [_owner(*owner)] if owner else None
    spec: Obj = {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app"}]}
    if host_network:
        spec["hostNetwork"] = True
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(
            name, ns, labels=labels or {}, annotations=annotations, ownerReferences=owners
        ),
        "spec": spec,
        "status": {
            "phase": "Running",
            "podIP": ip,
            "hostIP": "172.18.0.1",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def service(ns: str, name: str, *, ip: str, port: int = 80, target: int = 8080) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, ns),
        "spec": {
            "clusterIP": ip,
            "clusterIPs": [ip],
            "selector": {"app": name},
            "ports": [{"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}],
        },
    }


def endpointslice(ns: str, svc: str, pods: list[Obj], *, port: int = 8080) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _meta(f"{svc}-abcde", ns, labels={"kubernetes.io/service-name": svc}),
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [p["status"]["podIP"]],
                "conditions": {"ready": p["status"]["conditions"][0]["status"] == "True"},
                "nodeName": p["spec"]["nodeName"],
                "targetRef": {
                    "kind": "Pod",
                    "namespace": ns,
                    "name": p["metadata"]["name"],
                },
            }
            for p in pods
        ],
    }


class LabDir:
    """Writes objects the way the lab does: lab-wide resourceVersion, temp file then rename."""

    def __init__(self, root: Path) -> None:
        self.root = root / "objects"
        self.root.mkdir(parents=True, exist_ok=True)
        self._rv = itertools.count(100)

    def path(self, kind: str, ns: str | None, name: str) -> Path:
        folder = self.root / kind / ns if ns else self.root / kind
        return folder / f"{name}.yaml"

    def put(self, obj: Obj) -> Obj:
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        self.write_text(
            obj["kind"],
            obj["metadata"].get("namespace"),
            obj["metadata"]["name"],
            yaml.safe_dump(obj),
        )
        return obj

    def write_text(self, kind: str, ns: str | None, name: str, text: str) -> None:
        path = self.path(kind, ns, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{name}.tmp"
        tmp.write_text(text)
        os.rename(tmp, path)

    def delete(self, kind: str, ns: str | None, name: str) -> None:
        self.path(kind, ns, name).unlink()


def web_app(ns: str = "emojivoto", *, replicas: int = 2, nodes: int = 2) -> list[Obj]:
    """A namespace, nodes, a Deployment `web` with its ReplicaSet, pods, Service and slice."""
    objs: list[Obj] = [namespace(ns)] + [node(n) for n in range(1, nodes + 1)]
    objs.append(deployment(ns, "web", replicas=replicas, sa="web"))
    objs.append(replicaset(ns, "web-5d8f7", deployment="web"))
    pods = [
        pod(
            ns,
            f"web-5d8f7-{i}",
            node=f"node{i % nodes + 1}",
            ip=f"10.244.{i % nodes + 1}.{10 + i}",
            owner=("ReplicaSet", "web-5d8f7"),
            sa="web",
            labels={"app": "web"},
        )
        for i in range(replicas)
    ]
    objs += pods
    objs.append(service(ns, "web", ip="10.96.0.10"))
    objs.append(endpointslice(ns, "web", pods))
    return objs
