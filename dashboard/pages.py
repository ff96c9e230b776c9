"""HTML pages: a server-rendered shell per page (names checked and 404s decided here) whose
figures the page's script fills from /api and keeps fresh."""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path as FsPath
from string import Template
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse

from dashboard import checks, views
from nodemesh.version import __version__

TEMPLATES = FsPath(__file__).parent / "templates"
NAV = (
    ("overview", "/", "Overview"),
    ("deployments", "/deployments", "Deployments"),
    ("topology", "/topology", "Topology"),
    ("tap", "/tap", "Tap"),
    ("nodes", "/nodes", "Nodes"),
)

router = APIRouter(include_in_schema=False)
Window = Annotated[int, Query(ge=checks.MIN_WINDOW, le=checks.MAX_WINDOW)]
NamespaceQ = Annotated[str, Query(max_length=63)]


@cache
def template(name: str) -> Template:
    return Template((TEMPLATES / f"{name}.html").read_text())


def render(
    page: str, *, title: str, status: int = 200, data: dict[str, str] | None = None, **fields: Any
) -> HTMLResponse:
    """The layout around templates/<page>.html; every field is HTML-escaped here."""
    esc = {k: html.escape(str(v)) for k, v in fields.items()}
    content = template("error" if page == "error" else page).substitute(esc)
    attrs = "".join(
        f' data-{k.replace("_", "-")}="{html.escape(str(v))}"' for k, v in (data or {}).items()
    )
    nav = "".join(
        f'<a href="{href}"{" class=active" if key == page else ""}>{label}</a>'
        for key, href, label in NAV
    )
    body = template("layout").substitute(
        title=html.escape(title),
        page=page,
        data=attrs,
        nav=nav,
        content=content,
        version=html.escape(__version__),
    )
    return HTMLResponse(body, status_code=status)


def _scope(namespace: str) -> str:
    return f"in {namespace}" if namespace else "in all namespaces"


@router.get("/")
async def overview_page(window: Window = 60) -> HTMLResponse:
    return render("overview", title="Overview", data={"window": str(window)})


async def _namespaced_page(
    request: Request, template: str, title: str, namespace: str, window: int
) -> HTMLResponse:
    """A page over one namespace or all of them: checks the namespace, then renders."""
    if namespace:
        checks.namespace_name(namespace)
        await views.require_namespace(request.app.state.dash.client, namespace)
    return render(
        template,
        title=title,
        data={"namespace": namespace, "window": str(window)},
        scope=_scope(namespace),
        window=window,
    )


@router.get("/deployments")
async def deployments_page(
    request: Request, namespace: NamespaceQ = "", window: Window = 60
) -> HTMLResponse:
    return await _namespaced_page(request, "deployments", "Deployments", namespace, window)


@router.get("/namespaces/{namespace}/deployments/{name}")
async def deployment_page(
    request: Request,
    namespace: Annotated[str, Path(max_length=63)],
    name: Annotated[str, Path(max_length=253)],
    window: Window = 60,
) -> HTMLResponse:
    checks.namespace_name(namespace)
    checks.object_name(name, "deployment")
    await views.workload(request.app.state.dash.client, namespace, name)
    return render(
        "deployment",
        title=f"{namespace}/{name}",
        data={"namespace": namespace, "name": name, "window": str(window)},
        namespace=namespace,
        name=name,
    )


@router.get("/topology")
async def topology_page(
    request: Request, namespace: NamespaceQ = "", window: Window = 60
) -> HTMLResponse:
    return await _namespaced_page(request, "topology", "Topology", namespace, window)


@router.get("/tap")
async def tap_page(
    resource: Annotated[str, Query(max_length=300)] = "",
    namespace: NamespaceQ = "",
    to: Annotated[str, Query(max_length=300)] = "",
    method: Annotated[str, Query(max_length=20)] = "",
    path: Annotated[str, Query(max_length=512)] = "",
    max_rps: Annotated[float, Query(gt=0, le=checks.MAX_TAP_RPS)] = 10.0,
) -> HTMLResponse:
    # The form is only pre-filled here; /api/tap checks the values when the tap starts.
    return render(
        "tap",
        title="Tap",
        resource=resource,
        namespace=namespace,
        to=to,
        method=method,
        path=path,
        max_rps=f"{max_rps:g}",
    )


@router.get("/nodes")
async def nodes_page() -> HTMLResponse:
    return render("nodes", title="Nodes")
