"""Live tap as Server-Sent Events: one public API Tap stream per open page, bounded in number
and in time, ended as soon as the browser goes away (stopping the tap on the agents too)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from dashboard.checks import Ref, TapFilter
from dashboard.publicapi import PublicClient, Refused, Unreachable
from nodemesh import tasks
from nodemesh.api import public_pb2 as pb

HEARTBEAT_SECONDS = 5.0  # also how soon a closed tab is noticed when no events flow
QUEUE_SIZE = 256


class TooManyTaps(RuntimeError):
    pass


class TapGate:
    """At most `limit` taps at once, each at most `max_seconds` long."""

    def __init__(self, *, limit: int = 8, max_seconds: float = 600.0) -> None:
        self.limit = limit
        self.max_seconds = max_seconds
        self.open = 0

    def check(self) -> None:
        """Refuse a new tap up front (429); the stream itself counts while it runs, so a
        response that never starts cannot leak a slot."""
        if self.open >= self.limit:
            raise TooManyTaps(
                f"{self.open} taps are already running (limit {self.limit}); stop one first"
            )

    def enter(self) -> None:
        self.open += 1

    def leave(self) -> None:
        self.open -= 1


def _resource(ref: Ref) -> pb.Resource:
    if ref.kind == "ns":
        return pb.Resource(kind="ns", namespace=ref.namespace, name=ref.namespace)
    return pb.Resource(kind=ref.kind, namespace=ref.namespace, name=ref.name)


def request_of(f: TapFilter) -> pb.TapRequest:
    req = pb.TapRequest(
        resource=_resource(f.resource),
        method=f.method,
        path_prefix=f.path_prefix,
        max_rps=f.max_rps,
    )
    if f.to is not None:
        req.to_resource.CopyFrom(_resource(f.to))
    return req


def _peer(p: dict[str, Any]) -> dict[str, Any]:
    who = p.get("pod") or p.get("ip", "")
    if p.get("workload"):
        who = f"{p.get('workload_kind', '').lower() or 'deploy'}/{p['workload']} ({who})"
    return {
        "who": who,
        "namespace": p.get("namespace", ""),
        "ip": p.get("ip", ""),
        "port": p.get("port", 0),
        "identity": p.get("identity", ""),
        "service": p.get("service", ""),
    }


def shape(event: dict[str, Any]) -> dict[str, Any]:
    """A TapEvent as the page shows it: one of req, rsp, end with the fields that matter."""
    out: dict[str, Any] = {
        "id": f"{event.get('node', '')}/{event.get('request_id', '0')}",
        "node": event.get("node", ""),
        "direction": event.get("direction", "").lower(),
        "tls": bool(event.get("tls")),
        "timestamp_ms": int(event.get("timestamp_ms", 0)),
        "src": _peer(event.get("src", {})),
        "dst": _peer(event.get("dst", {})),
    }
    if "req" in event:
        r = event["req"]
        out["kind"] = "req"
        out.update(
            method=r.get("method", ""),
            authority=r.get("authority", ""),
            path=r.get("path", ""),
            protocol=r.get("protocol", ""),
        )
    elif "rsp" in event:
        out["kind"] = "rsp"
        out["status"] = event["rsp"].get("status", 0)
        out["latency_ms"] = int(event["rsp"].get("since_request_us", 0)) / 1000
    else:
        end = event.get("end", {})
        out["kind"] = "end"
        out["latency_ms"] = int(end.get("since_request_us", 0)) / 1000
        out["grpc_status"] = end.get("grpc_status")
        out["error"] = end.get("error", "")
        out["response_bytes"] = int(end.get("response_bytes", 0))
    return out


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def stream(client: PublicClient, f: TapFilter, gate: TapGate) -> AsyncIterator[bytes]:
    """SSE bytes: `started`, then one message per tap event, `error`/`end` when it stops."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + gate.max_seconds
    queue: asyncio.Queue[dict[str, Any] | Exception | None] = asyncio.Queue(QUEUE_SIZE)
    dropped = 0

    async def pump() -> None:
        nonlocal dropped
        try:
            async for event in client.tap(request_of(f)):
                try:
                    queue.put_nowait(shape(event))
                except asyncio.QueueFull:
                    dropped += 1  # a slow browser loses events, it never stalls the stream
            await queue.put(None)
        except (Refused, Unreachable) as exc:
            await queue.put(exc)

    pumping = tasks.spawn(pump(), name=f"dashboard-tap-{f.resource}")
    gate.enter()
    try:
        yield sse({"filter": str(f.resource), "max_rps": f.max_rps}, "started")
        while True:
            left = deadline - loop.time()
            if left <= 0:
                yield sse({"reason": f"taps stop after {gate.max_seconds:g} s"}, "end")
                return
            try:
                item = await asyncio.wait_for(queue.get(), min(HEARTBEAT_SECONDS, left))
            except TimeoutError:
                yield f": alive, {dropped} dropped\n\n".encode()
                continue
            if item is None:
                yield sse({"reason": "the control plane ended the tap"}, "end")
                return
            if isinstance(item, Exception):
                yield sse({"error": str(item)}, "error")
                return
            yield sse(item)
    finally:
        gate.leave()
        await tasks.cancel_all([pumping])
