"""What a cluster's controllers would derive from applied objects (sans-io): ReplicaSets and Pods
for Deployments, Pods for DaemonSets, EndpointSlices for Services, ClusterIPs, and scheduling."""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import random
import string
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nodemesh.lab.manifests import selects

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")
_SUFFIX = string.ascii_lowercase + string.digits


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid() -> str:
    return str(uuid.uuid4())


def template_hash(template: dict[str, Any]) -> str:
    """Like the pod-template-hash label: stable for the same template, changes when it does."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return "".join(c for c in digest if c.isalnum())[:10]


def random_suffix(rng: random.Random, n: int = 5) -> str:
    return "".join(rng.choice(_SUFFIX) for _ in range(n))


def owner_ref(owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def replicaset_for(deployment: dict[str, Any]) -> dict[str, Any]:
    meta = deployment["metadata"]
    template = copy.deepcopy(deployment["spec"]["template"])
    h = template_hash(template)
    labels = dict((template.get("metadata") or {}).get("labels") or {})
    labels["pod-template-hash"] = h
    template.setdefault("metadata", {})["labels"] = labels
    selector = dict(deployment["spec"]["selector"]["matchLabels"])
    selector["pod-template-hash"] = h
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{meta['name']}-{h}",
            "namespace": meta["namespace"],
            "uid": new_uid(),
            "labels": labels,
            "annotations": {"deployment.kubernetes.io/revision": "1"},
            "ownerReferences": [owner_ref(deployment)],
            "creationTimestamp": now(),
        },
        "spec": {
            "replicas": deployment["spec"].get("replicas", 1),
            "selector": {"matchLabels": selector},
            "template": template,
        },
        "status": {"replicas": 0, "readyReplicas": 0},
    }


def pod_from_template(
    owner: dict[str, Any], *, name: str, node: str | None = None
) -> dict[str, Any]:
    template = owner["spec"]["template"]
    spec = copy.deepcopy(template["spec"])
    spec.setdefault("serviceAccountName", spec.get("serviceAccount", "default"))
    spec.setdefault("restartPolicy", "Always")
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": owner["metadata"]["namespace"],
            "uid": new_uid(),
            "labels": dict((template.get("metadata") or {}).get("labels") or {}),
            "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
            "ownerReferences": [owner_ref(owner)],
            "creationTimestamp": now(),
        },
        "spec": spec,
        "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]},
    }


def allocate_cluster_ip(used: Iterable[str]) -> str:
    taken = set(used)
    # .1 is the kubernetes Service in a cluster and .10 cluster DNS; start above them.
    for host in list(SERVICE_CIDR.hosts())[10:]:
        if str(host) not in taken:
            return str(host)
    raise RuntimeError("the lab's Service range 10.96.0.0/16 is exhausted")


@dataclass(frozen=True)
class NodeInfo:
    name: str
    labels: dict[str, str]


class SchedulingError(ValueError):
    pass


def schedule(pod: dict[str, Any], *, nodes: list[NodeInfo], pods: Iterable[dict[str, Any]]) -> str:
    """Pick a node: nodeName if set, else among nodes matching nodeSelector the one with the
    fewest pods of the same owner, then the fewest pods overall, then by name."""
    spec = pod["spec"]
    names = {n.name for n in nodes}
    wanted = spec.get("nodeName")
    if wanted:
        if wanted not in names:
            raise SchedulingError(f"spec.nodeName: node {wanted!r} does not exist")
        return str(wanted)
    selector = spec.get("nodeSelector") or {}
    fitting = [n for n in nodes if selects(selector, n.labels)]
    if not fitting:
        raise SchedulingError(f"spec.nodeSelector: no node matches {selector}")
    owner = _owner_uid(pod)
    per_node: dict[str, int] = {n.name: 0 for n in nodes}
    same_owner: dict[str, int] = {n.name: 0 for n in nodes}
    for p in pods:
        node = p["spec"].get("nodeName")
        if node in per_node:
            per_node[node] += 1
            if owner and _owner_uid(p) == owner:
                same_owner[node] += 1
    best = min(fitting, key=lambda n: (same_owner[n.name], per_node[n.name], n.name))
    return best.name


def _owner_uid(obj: dict[str, Any]) -> str | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return refs[0]["uid"] if refs else None


def endpointslice_for(
    service: dict[str, Any], pods: Iterable[dict[str, Any]], *, name: str
) -> dict[str, Any]:
    """The EndpointSlice the endpoint-slice controller would write for `service`."""
    meta = service["metadata"]
    selector = service["spec"]["selector"]
    endpoints = []
    for p in sorted(pods, key=lambda p: p["metadata"]["name"]):
        if p["metadata"]["namespace"] != meta["namespace"]:
            continue
        if not selects(selector, p["metadata"].get("labels") or {}):
            continue
        ip = p.get("status", {}).get("podIP")
        if not ip or p.get("metadata", {}).get("deletionTimestamp"):
            continue
        endpoints.append(
            {
                "addresses": [ip],
                "conditions": {"ready": is_ready(p), "serving": is_ready(p), "terminating": False},
                "nodeName": p["spec"].get("nodeName"),
                "targetRef": {
                    "kind": "Pod",
                    "namespace": p["metadata"]["namespace"],
                    "name": p["metadata"]["name"],
                    "uid": p["metadata"]["uid"],
                },
            }
        )
    ports = []
    for port in service["spec"]["ports"]:
        ports.append(
            {
                "name": port.get("name", ""),
                "port": resolve_target_port(port, pods_for_port(service, pods)),
                "protocol": port.get("protocol", "TCP"),
            }
        )
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "uid": new_uid(),
            "labels": {
                "kubernetes.io/service-name": meta["name"],
                "endpointslice.kubernetes.io/managed-by": "lab.nodemesh.io",
            },
            "ownerReferences": [owner_ref(service)],
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": ports,
    }


def pods_for_port(service: dict[str, Any], pods: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    selector = service["spec"]["selector"]
    ns = service["metadata"]["namespace"]
    return [
        p
        for p in pods
        if p["metadata"]["namespace"] == ns and selects(selector, p["metadata"].get("labels") or {})
    ]


def resolve_target_port(port: dict[str, Any], pods: list[dict[str, Any]]) -> int:
    """targetPort may be a number or the name of a containerPort; default is the port itself."""
    target = port.get("targetPort", port["port"])
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for p in pods:
        for c in p["spec"]["containers"]:
            for cp in c.get("ports") or []:
                if cp.get("name") == target:
                    return int(cp["containerPort"])
    return int(port["port"])


def is_ready(pod: dict[str, Any]) -> bool:
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def set_ready(pod: dict[str, Any], ready: bool) -> bool:
    """Set the Ready condition; True when it changed."""
    conds = pod.setdefault("status", {}).setdefault("conditions", [])
    for cond in conds:
        if cond.get("type") == "Ready":
            value = "True" if ready else "False"
            if cond.get("status") == value:
                return False
            cond["status"] = value
            cond["lastTransitionTime"] = now()
            return True
    conds.append({"type": "Ready", "status": "True" if ready else "False"})
    return True
