"""A small cluster on the adoption path's first stages, as Kubernetes-shaped dicts: emojivoto
unmeshed, an ingress-nginx controller in front of web, and a HAProxy router web's gRPC calls
pass through (EMOJISVC_HOST/VOTINGSVC_HOST name the router's Service)."""

from __future__ import annotations

import copy
from typing import Any

from nodemesh.migrate.plan import Change

ROUTES = "8081=emoji-svc.emojivoto:8080,8082=voting-svc.emojivoto:8080"


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": dict(labels), "uid": f"uid-{name}"}}  # fmt: skip


def deployment(
    ns: str, name: str, image: str, *, env: dict[str, str] | None = None,
    ports: tuple[int, ...] = (),
) -> dict[str, Any]:  # fmt: skip
    container: dict[str, Any] = {"name": name, "image": image}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if ports:
        container["ports"] = [{"containerPort": p} for p in ports]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{ns}-{name}",
                     "resourceVersion": "7"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [container]}},
        },
        "status": {"readyReplicas": 1},
    }  # fmt: skip


def service(ns: str, name: str, app: str, ports: list[int], **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"selector": {"app": app}, "ports": [{"port": p} for p in ports]}}  # fmt: skip


def emojivoto(*, routes: str | None = ROUTES) -> list[dict[str, Any]]:
    router_annotations = {"nodemesh.io/router-routes": routes} if routes else {}
    return [
        namespace("kube-system"),
        namespace("nodemesh"),
        namespace("ingress-nginx"),
        namespace("emojivoto"),
        deployment("ingress-nginx", "ingress-nginx-controller",
                   "registry.k8s.io/ingress-nginx/controller:v1.9.4", ports=(80, 443, 8443)),
        service("ingress-nginx", "ingress-nginx-controller", "ingress-nginx-controller", [80]),
        deployment("emojivoto", "emoji", "ghcr.io/nodemesh/emojivoto:0.1.0", ports=(8080,)),
        deployment("emojivoto", "voting", "ghcr.io/nodemesh/emojivoto:0.1.0", ports=(8080,)),
        deployment("emojivoto", "web", "ghcr.io/nodemesh/emojivoto:0.1.0", ports=(8080,), env={
            "WEB_PORT": "8080",
            "EMOJISVC_HOST": "router.emojivoto:8081",
            "VOTINGSVC_HOST": "router:8082",
        }),
        deployment("emojivoto", "vote-bot", "ghcr.io/nodemesh/emojivoto:0.1.0",
                   env={"WEB_HOST": "ingress-nginx-controller.ingress-nginx:80"}),
        deployment("emojivoto", "router", "haproxy:2.6", ports=(8081, 8082)),
        service("emojivoto", "emoji-svc", "emoji", [8080]),
        service("emojivoto", "voting-svc", "voting", [8080]),
        service("emojivoto", "web-svc", "web", [80]),
        service("emojivoto", "router", "router", [8081, 8082], **router_annotations),
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
         "metadata": {"name": "web", "namespace": "emojivoto"},
         "spec": {"ingressClassName": "nginx"}},
    ]  # fmt: skip


def applied(objects: list[dict[str, Any]], changes: list[Change]) -> list[dict[str, Any]]:
    """The cluster after `changes`, as an API server would keep it."""
    by_key = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
              for o in objects}  # fmt: skip
    for c in changes:
        key = (c.kind, c.namespace, c.name)
        if c.after is None:
            by_key.pop(key, None)
        else:
            by_key[key] = copy.deepcopy(c.after)
    return list(by_key.values())
