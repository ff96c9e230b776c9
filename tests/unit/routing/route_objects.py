"""HTTPRoute / GRPCRoute objects as users write them (GAMMA: parentRefs name a Service)."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def http_route(
    name: str,
    *,
    ns: str = "emojivoto",
    parent: str = "web",
    rules: list[Obj] | None = None,
    annotations: dict[str, str] | None = None,
    created: str = "",
) -> Obj:
    meta: Obj = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    if created:
        meta["creationTimestamp"] = created
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": meta,
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": 80}],
            "rules": rules if rules is not None else [{"backendRefs": [{"name": parent}]}],
        },
    }


def split(name: str, a: tuple[str, int], b: tuple[str, int], *, parent: str = "web") -> Obj:
    return http_route(
        name,
        parent=parent,
        rules=[
            {
                "backendRefs": [
                    {"name": a[0], "port": 80, "weight": a[1]},
                    {"name": b[0], "port": 80, "weight": b[1]},
                ]
            }
        ],
    )


def grpc_route(name: str, *, ns: str = "emojivoto", parent: str = "emoji-svc") -> Obj:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GRPCRoute",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "parentRefs": [{"kind": "Service", "group": "", "name": parent, "port": 8080}],
            "rules": [
                {
                    "matches": [{"method": {"service": "emojivoto.v1.EmojiService"}}],
                    "backendRefs": [{"name": parent, "port": 8080}],
                }
            ],
        },
    }
