"""The FastAPI application: pages, /api, static assets, and one error policy for both.

Errors: a bad value is 400, an unknown namespace or deployment 404, too many taps 429, the
control plane not answering 503; /api answers JSON {"error", "status"}, pages an HTML page.
"""

from __future__ import annotations

import http
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from dashboard import api, pages
from dashboard.checks import BadInput, NotFound
from dashboard.history import History
from dashboard.publicapi import PublicClient, Refused, Unreachable
from dashboard.tapstream import TapGate, TooManyTaps
from nodemesh import tasks
from nodemesh.version import __version__

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
# Everything the pages load comes from the dashboard itself: clusters are often offline, and a
# page that tried a CDN would hang on it.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass
class DashState:
    client: PublicClient
    history: History
    gate: TapGate


def _status_of(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, BadInput | Refused):
        return 400, str(exc)
    if isinstance(exc, NotFound):
        return 404, str(exc)
    if isinstance(exc, TooManyTaps):
        return 429, str(exc)
    if isinstance(exc, Unreachable):
        return 503, f"the control plane did not answer: {exc}"
    if isinstance(exc, RequestValidationError):
        return 400, "; ".join(_validation_message(e) for e in exc.errors())
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    raise exc


def _validation_message(err: dict[str, object]) -> str:
    where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path"))  # type: ignore[attr-defined]
    return f"{where}: {err.get('msg', 'invalid value')}"


async def _error(request: Request, exc: Exception) -> Response:
    status, message = _status_of(exc)
    if request.url.path.startswith("/api/") or request.url.path == "/api":
        return JSONResponse({"error": message, "status": status}, status_code=status)
    reason = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else ""
    return pages.render(
        "error", title=f"{status} {reason}", status=status, code=status,
        reason=reason, message=message,
    )  # fmt: skip


def create_app(
    public_api: str,
    *,
    ttl: float = 1.0,
    sample_period: float = 5.0,
    tap_limit: int = 8,
    token_file: str | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The channel belongs to the serving loop, so it is made here and not at import.
        client = PublicClient(public_api, ttl=ttl, token_file=token_file)
        history = History()
        app.state.dash = DashState(client, history, TapGate(limit=tap_limit))
        sampler = tasks.spawn(
            history.sample_forever(client, period=sample_period), name="dashboard-history"
        )
        try:
            yield
        finally:
            await tasks.cancel_all([sampler])
            await client.close()

    app = FastAPI(
        title="nodemesh dashboard",
        version=__version__,
        description="Golden metrics, edges, topology, tap and node agents of a nodemesh mesh. "
        "Every figure comes from the control plane's public API.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their assets from a CDN: left out, the document is enough.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    for exc_type in (
        BadInput, NotFound, Refused, Unreachable, TooManyTaps, RequestValidationError,
        HTTPException,
    ):  # fmt: skip
        app.add_exception_handler(exc_type, _error)

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        # Serving is all it takes: with the control plane away, pages still load and say so.
        return Response("ok\n", media_type="text/plain")

    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
