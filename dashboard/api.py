"""/api: JSON mirrors of the pages, the live deployments stream and the live tap (SSE)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse

from dashboard import checks, schemas, tapstream, views
from dashboard.publicapi import Unreachable
from nodemesh.version import __version__

router = APIRouter(prefix="/api", tags=["api"])

Window = Annotated[int, Query(ge=checks.MIN_WINDOW, le=checks.MAX_WINDOW, description="seconds")]
NamespaceQ = Annotated[str, Query(max_length=63, description="empty: all namespaces")]
NamespaceP = Annotated[str, Path(max_length=63)]
NameP = Annotated[str, Path(max_length=253)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.Error} for code in (400, 404, 429, 503)
}
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def _state(request: Request) -> Any:
    return request.app.state.dash


def _namespace(value: str) -> str:
    return checks.namespace_name(value) if value else ""


@router.get("/overview", response_model=schemas.Overview, responses=ERRORS)
async def overview(request: Request, window: Window = 60) -> dict[str, Any]:
    """Namespaces with meshed/total pods and golden metrics; the node agents."""
    return await views.overview(_state(request).client, window=window)


@router.get("/deployments", response_model=schemas.Deployments, responses=ERRORS)
async def deployments(
    request: Request, namespace: NamespaceQ = "", window: Window = 60
) -> dict[str, Any]:
    """Deployments with golden metrics (inbound traffic) over the window."""
    return await views.deployments(
        _state(request).client, namespace=_namespace(namespace), window=window
    )


@router.get(
    "/deployments/stream",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
    response_class=StreamingResponse,
)
async def deployments_stream(
    request: Request,
    namespace: NamespaceQ = "",
    window: Window = 60,
    interval: Annotated[float, Query(ge=1, le=60)] = 2.0,
) -> StreamingResponse:
    """Server-Sent Events: the /api/deployments answer every `interval` seconds."""
    client = _state(request).client
    ns = _namespace(namespace)
    first = await views.deployments(client, namespace=ns, window=window)  # 4xx before streaming

    async def events() -> AsyncIterator[bytes]:
        answer: dict[str, Any] | None = first
        while True:
            if answer is not None:
                yield tapstream.sse(answer)
            await asyncio.sleep(interval)
            try:
                answer = await views.deployments(client, namespace=ns, window=window)
            except Unreachable as exc:
                answer = None
                yield tapstream.sse({"error": str(exc)}, "error")

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.get(
    "/namespaces/{namespace}/deployments/{name}",
    response_model=schemas.Deployment,
    responses=ERRORS,
)
async def deployment(
    request: Request, namespace: NamespaceP, name: NameP, window: Window = 60
) -> dict[str, Any]:
    """One Deployment: golden metrics, their history, edges with identities and mTLS, pods."""
    st = _state(request)
    return await views.deployment(
        st.client,
        st.history,
        namespace=checks.namespace_name(namespace),
        name=checks.object_name(name, "deployment"),
        window=window,
    )


@router.get("/topology", response_model=schemas.Topology, responses=ERRORS)
async def topology(
    request: Request, namespace: NamespaceQ = "", window: Window = 60
) -> dict[str, Any]:
    """Deployments as nodes and traffic between them as edges (RPS, success rate, mTLS)."""
    return await views.topology(
        _state(request).client, namespace=_namespace(namespace), window=window
    )


@router.get("/nodes", response_model=schemas.Nodes, responses=ERRORS)
async def nodes(request: Request) -> dict[str, Any]:
    """Each node with its agent: connection, version, enrolled pods, load, last report."""
    return await views.nodes(_state(request).client)


@router.get("/version", response_model=schemas.Version, responses=ERRORS)
async def version(request: Request) -> dict[str, Any]:
    v = await _state(request).client.version()
    return {
        "dashboard": __version__,
        "controlplane": v.get("version", ""),
        "source": v.get("source", ""),
        "trust_domain": v.get("trust_domain", ""),
        "synced": bool(v.get("synced")),
    }


@router.get(
    "/tap",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
    response_class=StreamingResponse,
)
async def tap(
    request: Request,
    resource: Annotated[str, Query(max_length=300, description="deploy/web, pod/x, ns/x")],
    namespace: NamespaceQ = "default",
    to: Annotated[str, Query(max_length=300)] = "",
    to_namespace: NamespaceQ = "",
    method: Annotated[str, Query(max_length=20)] = "",
    path: Annotated[str, Query(max_length=512)] = "",
    max_rps: Annotated[float, Query(gt=0, le=checks.MAX_TAP_RPS)] = 10.0,
) -> StreamingResponse:
    """Server-Sent Events: live requests matching the filters until the page closes the stream."""
    st = _state(request)
    f = checks.tap_filter(
        resource=resource,
        namespace=namespace or "default",
        to=to,
        to_namespace=to_namespace,
        method=method,
        path=path,
        max_rps=max_rps,
    )
    await views.require_ref(st.client, f.resource)
    if f.to is not None:
        await views.require_ref(st.client, f.to)
    st.gate.check()
    return StreamingResponse(
        tapstream.stream(st.client, f, st.gate), media_type="text/event-stream", headers=SSE_HEADERS
    )
