"""What each page shows, composed from public API answers (the /api routes return these dicts).

Edges from the API carry request counts but not outcomes; an edge's success rate comes from the
client's view, Stat(deploy, --to <destination>) grouped by source, one query per destination.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from dashboard.checks import NotFound, Ref
from dashboard.history import History
from dashboard.publicapi import PublicClient, Refused, Unreachable

MAX_EDGE_DESTINATIONS = 50  # per page: bounds the Stat queries one topology costs


async def known_namespaces(client: PublicClient) -> dict[str, bool]:
    return dict((await client.workloads()).get("namespaces_meshed", {}))


async def require_namespace(client: PublicClient, namespace: str) -> None:
    if namespace not in await known_namespaces(client):
        raise NotFound(f"namespace {namespace!r} does not exist in the cluster")


async def workload(client: PublicClient, namespace: str, name: str) -> dict[str, Any]:
    await require_namespace(client, namespace)
    for w in (await client.workloads()).get("workloads", []):
        if w["kind"] == "Deployment" and w["namespace"] == namespace and w["name"] == name:
            return dict(w)
    raise NotFound(f"deployment {name!r} does not exist in namespace {namespace!r}")


async def require_ref(client: PublicClient, ref: Ref) -> None:
    """A tap target must exist: the broker would otherwise tap nothing, silently."""
    await require_namespace(client, ref.namespace)
    if ref.kind == "ns":
        return
    rows = await client.stat(ref.kind, namespace=ref.namespace, name=ref.name, window=10)
    if not rows:
        raise NotFound(f"{ref.kind} {ref.name!r} does not exist in namespace {ref.namespace!r}")


async def overview(client: PublicClient, *, window: int) -> dict[str, Any]:
    meshed, rows, nodes = await asyncio.gather(
        known_namespaces(client), client.stat("ns", window=window), client.nodes()
    )
    namespaces = [
        {**r, "namespace": r["name"], "labelled": meshed.get(r["name"], False)} for r in rows
    ]
    return {"window": window, "namespaces": namespaces, "nodes": [_node(n) for n in nodes]}


async def deployments(client: PublicClient, *, namespace: str, window: int) -> dict[str, Any]:
    if namespace:
        await require_namespace(client, namespace)
    rows = await client.stat(
        "deploy", namespace=namespace, all_namespaces=not namespace, window=window
    )
    return {"window": window, "namespace": namespace, "deployments": rows}


async def edge_success(
    client: PublicClient, destinations: set[tuple[str, str]], *, window: int
) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """Client-side stats of each (src ns, src, dst ns, dst) edge towards `destinations`."""
    picked = sorted(destinations)[:MAX_EDGE_DESTINATIONS]
    answers = await asyncio.gather(
        *(
            client.stat("deploy", all_namespaces=True, to=("deploy", ns, name), window=window)
            for ns, name in picked
        )
    )
    out = {}
    for (ns, name), rows in zip(picked, answers, strict=True):
        for r in rows:
            out[(r["namespace"], r["name"], ns, name)] = r
    return out


def _edge(e: dict[str, Any], stats: dict[str, Any] | None, window: int) -> dict[str, Any]:
    # The client's count when it reported one: Edges adds up what both agents reported, so a
    # request seen by the client's and the server's agent would count twice.
    requests = stats["requests"] if stats else int(e.get("requests", 0))
    return {
        "src_namespace": e["src"]["namespace"],
        "src": e["src"]["name"],
        "dst_namespace": e["dst"]["namespace"],
        "dst": e["dst"]["name"],
        "src_identity": e.get("src_identity", ""),
        "dst_identity": e.get("dst_identity", ""),
        "tls": bool(e.get("tls")),
        "requests": requests,
        "tcp_connections": int(e.get("tcp_connections", 0)),
        "rps": stats["rps"] if stats else requests / window,
        "success_rate": stats["success_rate"] if stats else None,
        "latency_p99_ms": stats["latency_p99_ms"] if stats else None,
    }


def _owner_of(known: set[tuple[str, str]], namespace: str, name: str) -> tuple[str, str]:
    """The Deployment a pod name belongs to, for edges whose reporter knew only the pod."""
    if (namespace, name) in known:
        return namespace, name
    for ns, deploy in known:
        if ns == namespace and pod_pattern(deploy).fullmatch(name):
            return ns, deploy
    return namespace, name


def _merged(raw: list[dict[str, Any]], known: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """One edge per pair of Deployments. When one agent named a peer by its pod and the other by
    its Deployment, the two reports describe the same requests: keep the larger count, not the
    sum, and call the traffic mTLS only if both said so."""
    out: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for e in raw:
        src = _owner_of(known, e["src"]["namespace"], e["src"]["name"])
        dst = _owner_of(known, e["dst"]["namespace"], e["dst"]["name"])
        key = (*src, *dst)
        seen = out.get(key)
        if seen is None:
            out[key] = {
                **e,
                "src": {"namespace": src[0], "name": src[1]},
                "dst": {"namespace": dst[0], "name": dst[1]},
            }
            continue
        for field in ("requests", "tcp_connections"):
            seen[field] = max(int(seen.get(field, 0)), int(e.get(field, 0)))
        seen["tls"] = bool(seen.get("tls")) and bool(e.get("tls"))
        for field in ("src_identity", "dst_identity"):
            seen[field] = seen.get(field) or e.get(field, "")
    return list(out.values())


async def _edges(client: PublicClient, *, namespace: str, window: int) -> list[dict[str, Any]]:
    raw, workloads = await asyncio.gather(
        client.edges(namespace=namespace, window=window), client.workloads()
    )
    known = {
        (w["namespace"], w["name"]) for w in workloads.get("workloads", [])
        if w["kind"] == "Deployment"
    }  # fmt: skip
    merged = _merged(raw, known)
    dsts = {(e["dst"]["namespace"], e["dst"]["name"]) for e in merged}
    stats = await edge_success(client, dsts, window=window)
    out = []
    for e in merged:
        key = (e["src"]["namespace"], e["src"]["name"], e["dst"]["namespace"], e["dst"]["name"])
        out.append(_edge(e, stats.get(key), window))
    return out


def pod_pattern(deployment: str) -> re.Pattern[str]:
    """Pods a Deployment makes are `<deployment>-<replicaset hash>-<suffix>`; the hash and the
    suffix hold no dash, so `web` does not claim `web-api`'s pods."""
    return re.compile(re.escape(deployment) + r"-[a-z0-9]+-[a-z0-9]+")


async def deployment(
    client: PublicClient, history: History, *, namespace: str, name: str, window: int
) -> dict[str, Any]:
    wl = await workload(client, namespace, name)
    rows, edges, pods, routes = await asyncio.gather(
        client.stat("deploy", namespace=namespace, name=name, window=window),
        _edges(client, namespace=namespace, window=window),
        client.stat("pod", namespace=namespace, window=window),
        _routes(client, namespace=namespace, name=name, window=window),
    )
    pattern = pod_pattern(name)
    me = (namespace, name)
    return {
        "window": window,
        "namespace": namespace,
        "name": name,
        "stat": rows[0] if rows else None,
        "identities": wl.get("identities", []),
        "pods": wl.get("pods", 0),
        "ready_pods": wl.get("ready_pods", 0),
        "meshed_pods": wl.get("meshed_pods", 0),
        "nodes": wl.get("nodes", []),
        "mesh_errors": wl.get("mesh_errors", []),
        "pod_rows": [p for p in pods if pattern.fullmatch(p["name"])],
        "inbound": [e for e in edges if (e["dst_namespace"], e["dst"]) == me],
        "outbound": [e for e in edges if (e["src_namespace"], e["src"]) == me],
        "history": history.points(namespace, name),
        "routes": routes["rows"],
        "routes_error": routes["error"],
    }


async def _routes(
    client: PublicClient, *, namespace: str, name: str, window: int
) -> dict[str, Any]:
    """The route rows of the Services backed by the Deployment; the rest of the page stands
    when they cannot be had (a control plane without Routes, the workload gone meanwhile)."""
    try:
        answer = await client.routes("deploy", namespace=namespace, name=name, window=window)
    except (Refused, Unreachable) as exc:
        return {"rows": [], "error": str(exc)}
    return {"rows": answer["rows"], "error": ""}


async def topology(client: PublicClient, *, namespace: str, window: int) -> dict[str, Any]:
    if namespace:
        await require_namespace(client, namespace)
    rows, edges = await asyncio.gather(
        client.stat("deploy", namespace=namespace, all_namespaces=not namespace, window=window),
        _edges(client, namespace=namespace, window=window),
    )
    nodes = {(r["namespace"], r["name"]): r for r in rows}
    for e in edges:  # peers in other namespaces still appear, without their own figures
        for key in ((e["src_namespace"], e["src"]), (e["dst_namespace"], e["dst"])):
            nodes.setdefault(key, {"namespace": key[0], "name": key[1], "rps": 0.0})
    return {
        "window": window,
        "namespace": namespace,
        "nodes": [
            {
                "namespace": n["namespace"],
                "name": n["name"],
                "rps": n.get("rps", 0.0),
                "success_rate": n.get("success_rate"),
                "meshed_pods": n.get("meshed_pods", 0),
                "total_pods": n.get("total_pods", 0),
            }
            for n in nodes.values()
        ],
        "edges": edges,
    }


def _node(n: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": n["name"],
        "internal_ip": n.get("internal_ip", ""),
        "pod_cidr": n.get("pod_cidr", ""),
        "ready": bool(n.get("ready")),
        "pods": n.get("pods", 0),
        "meshed_pods": n.get("meshed_pods", 0),
        "agent_connected": bool(n.get("agent_connected")),
        "agent_version": n.get("agent_version", ""),
        "last_report_unix_ms": int(n.get("last_report_unix_ms", 0)),
        "pods_enrolled": n.get("pods_enrolled", 0),
        "open_connections": n.get("open_connections", 0),
        "cpu_seconds": float(n.get("cpu_seconds", 0.0)),
        "rss_bytes": int(n.get("rss_bytes", 0)),
    }


async def nodes(client: PublicClient) -> dict[str, Any]:
    return {"nodes": [_node(n) for n in await client.nodes()]}
