"""The dashboard's only data source: the control plane's public API over grpc.aio, answers as
plain dicts, coalesced per key for about a second so many open browsers cost one query.

Errors are translated here: INVALID_ARGUMENT and RESOURCE_EXHAUSTED become `Refused` (the user
asked for something the API will not serve, shown as 400), anything else `Unreachable` (503).

Every call carries the dashboard's own ServiceAccount token (`token_file`, re-read on each call
so a rotated projected token is picked up): the dashboard sees what its ServiceAccount is
granted, whoever opens it (docs/security.md).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from dashboard.coalesce import Coalescer
from nodemesh.api import public_pb2 as pb
from nodemesh.api import public_pb2_grpc as pb_grpc

CALL_TIMEOUT = 5.0
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class Refused(ValueError):
    """The public API refused the query; the message is meant for the user."""


class Unreachable(RuntimeError):
    """The public API did not answer."""


def _translate(exc: grpc.aio.AioRpcError) -> Exception:
    if exc.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.NOT_FOUND,
    ):
        return Refused(exc.details() or "refused by the control plane")
    return Unreachable(f"control plane public API: {exc.code().name}: {exc.details()}")


def _dict(msg: Any) -> dict[str, Any]:
    return MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def resource(kind: str, namespace: str = "", name: str = "") -> pb.Resource:
    return pb.Resource(kind=kind, namespace=namespace, name=name)


class PublicClient:
    def __init__(self, target: str, *, ttl: float = 1.0, token_file: str | None = None) -> None:
        self.target = target
        self.token_file = Path(token_file) if token_file else None
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.PublicStub(self.channel)
        self.cache = Coalescer(ttl=ttl)

    async def close(self) -> None:
        await self.channel.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self.token_file is None:
            return ()
        try:
            token = self.token_file.read_text().strip()
        except OSError:
            return ()  # the public API answers UNAUTHENTICATED, which the pages show
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def _unary(self, key: tuple[Any, ...], method: Any, request: Any) -> dict[str, Any]:
        async def fetch() -> dict[str, Any]:
            try:
                return _dict(await method(request, timeout=CALL_TIMEOUT, metadata=self._metadata()))
            except grpc.aio.AioRpcError as exc:
                raise _translate(exc) from None

        result: dict[str, Any] = await self.cache.get(key, fetch)
        return result

    async def stat(
        self,
        kind: str,
        *,
        namespace: str = "",
        name: str = "",
        all_namespaces: bool = False,
        to: tuple[str, str, str] | None = None,
        from_: tuple[str, str, str] | None = None,
        window: int = 60,
    ) -> list[dict[str, Any]]:
        req = pb.StatRequest(
            resource=resource(kind, namespace, name),
            all_namespaces=all_namespaces,
            window_seconds=window,
        )
        if to is not None:
            req.to_resource.CopyFrom(resource(*to))
        if from_ is not None:
            req.from_resource.CopyFrom(resource(*from_))
        key = ("stat", kind, namespace, name, all_namespaces, to, from_, window)
        answer = await self._unary(key, self.stub.Stat, req)
        return [_flat_row(r) for r in answer.get("rows", [])]

    async def edges(self, *, namespace: str = "", window: int = 60) -> list[dict[str, Any]]:
        req = pb.EdgesRequest(
            kind="deploy", namespace=namespace, all_namespaces=not namespace, window_seconds=window
        )
        answer = await self._unary(("edges", namespace, window), self.stub.Edges, req)
        return list(answer.get("edges", []))

    async def routes(
        self, kind: str, *, namespace: str, name: str, window: int = 60
    ) -> dict[str, Any]:
        """Per-route rows (64-bit counters as numbers) and the routes attached."""
        req = pb.RoutesRequest(resource=resource(kind, namespace, name), window_seconds=window)
        answer = await self._unary(("routes", kind, namespace, name, window), self.stub.Routes, req)
        rows = []
        for r in answer.get("rows", []):
            row = {k: r.get(k, "") for k in ("service_namespace", "service", "route", "kind")}
            row["requests"] = int(r.get("requests", 0))
            row["rps"] = float(r.get("rps", 0.0))
            for field in ("success_rate", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
                row[field] = r.get(field)
            rows.append(row)
        return {"rows": rows, "attached": list(answer.get("attached", []))}

    async def workloads(self) -> dict[str, Any]:
        return await self._unary(("workloads",), self.stub.ListWorkloads, pb.ListWorkloadsRequest())

    async def nodes(self) -> list[dict[str, Any]]:
        answer = await self._unary(("nodes",), self.stub.ListNodes, pb.ListNodesRequest())
        return list(answer.get("nodes", []))

    async def version(self) -> dict[str, Any]:
        return await self._unary(("version",), self.stub.Version, pb.VersionRequest())

    async def tap(self, request: pb.TapRequest) -> AsyncIterator[dict[str, Any]]:
        """Tap events as dicts until the caller stops iterating (which cancels the stream)."""
        call = self.stub.Tap(request, metadata=self._metadata())
        try:
            async for event in call:
                yield _dict(event)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise _translate(exc) from None
        finally:
            call.cancel()


def _flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """A StatRow with its resource folded in and 64-bit counters as numbers (JSON of protobuf
    writes uint64 as strings). The cached answer is shared: it is read, never changed."""
    res = row.get("resource", {})
    out: dict[str, Any] = {"kind": res.get("kind", ""), "namespace": res.get("namespace", "")}
    out["name"] = res.get("name", "")
    for field in (
        "requests",
        "tcp_open_connections",
        "tcp_read_bytes",
        "tcp_write_bytes",
        "authz_denied",
    ):
        out[field] = int(row.get(field, 0))
    out["meshed_pods"] = row.get("meshed_pods", 0)
    out["total_pods"] = row.get("total_pods", 0)
    out["rps"] = float(row.get("rps", 0.0))
    for field in ("success_rate", "latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
        out[field] = row.get(field)
    return out
