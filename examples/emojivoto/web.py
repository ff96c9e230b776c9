"""The web front end: an HTML page and a JSON API over the emoji and voting gRPC services.

Routes: `/` (the page), `/api/list`, `/api/vote?choice=<shortcode>`, `/api/leaderboard`,
`/ready`. Run as `python3 -m emojivoto.web`; env WEB_PORT (8080), EMOJISVC_HOST
(emoji-svc.emojivoto:8080), VOTINGSVC_HOST (voting-svc.emojivoto:8080), BIND_ADDRESS (0.0.0.0).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import grpc

from emojivoto import asgi, lifecycle
from emojivoto.gen import emoji_pb2, emoji_pb2_grpc, voting_pb2, voting_pb2_grpc

# Each backend call gets this long; the page and the vote-bot see a 500 rather than a hang.
BACKEND_TIMEOUT_S = 2.0

PAGE = resources.files("emojivoto").joinpath("web.html").read_bytes()

Reply = tuple[int, Any]


class WebApp:
    """The ASGI application; the gRPC stubs are given, so it runs against any backend address."""

    def __init__(
        self,
        *,
        emoji: emoji_pb2_grpc.EmojiServiceStub,
        voting: voting_pb2_grpc.VotingServiceStub,
    ) -> None:
        self._emoji = emoji
        self._voting = voting
        self._routes: dict[str, Callable[[dict[str, list[str]]], Awaitable[Reply]]] = {
            "/api/list": self._list,
            "/api/vote": self._vote,
            "/api/leaderboard": self._leaderboard,
            "/ready": self._ready,
        }

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await asgi.send_json(send, 405, {"error": f"{scope['method']} is not allowed"})
            return
        if path in ("/", "/index.html"):
            await asgi.send_bytes(send, 200, PAGE, "text/html; charset=utf-8")
            return
        route = self._routes.get(path)
        if route is None:
            await asgi.send_json(send, 404, {"error": f"no such path: {path}"})
            return
        query = parse_qs(scope["query_string"].decode("latin-1"))
        status, body = await route(query)
        await asgi.send_json(send, status, body)

    async def _ready(self, query: dict[str, list[str]]) -> Reply:
        return 200, {"ready": True}

    async def _list(self, query: dict[str, list[str]]) -> Reply:
        try:
            reply = await self._emoji.ListAll(
                emoji_pb2.ListAllEmojiRequest(), timeout=BACKEND_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            return _backend_failed("emoji", exc)
        return 200, [{"shortcode": e.shortcode, "unicode": e.unicode} for e in reply.list]

    async def _vote(self, query: dict[str, list[str]]) -> Reply:
        choice = (query.get("choice") or [""])[0]
        if not choice:
            return 400, {"error": "missing query parameter: choice"}
        try:
            found = await self._emoji.FindByShortcode(
                emoji_pb2.FindByShortcodeRequest(shortcode=choice), timeout=BACKEND_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            return _backend_failed("emoji", exc)
        if not found.HasField("emoji"):
            return 400, {"error": f"no emoji with shortcode {choice}"}
        try:
            await self._voting.Vote(
                voting_pb2.VoteRequest(shortcode=choice), timeout=BACKEND_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            return _backend_failed("voting", exc)
        return 200, {"voted": choice, "unicode": found.emoji.unicode}

    async def _leaderboard(self, query: dict[str, list[str]]) -> Reply:
        try:
            results, catalog = await asyncio.gather(
                self._voting.Results(voting_pb2.ResultsRequest(), timeout=BACKEND_TIMEOUT_S),
                self._emoji.ListAll(emoji_pb2.ListAllEmojiRequest(), timeout=BACKEND_TIMEOUT_S),
            )
        except grpc.aio.AioRpcError as exc:
            return _backend_failed("voting or emoji", exc)
        glyphs = {e.shortcode: e.unicode for e in catalog.list}
        return 200, [
            {"shortcode": r.shortcode, "unicode": glyphs.get(r.shortcode, ""), "votes": r.votes}
            for r in results.results
        ]


def _backend_failed(service: str, exc: grpc.aio.AioRpcError) -> Reply:
    # A failed backend call is a 500, as in the original; the body says which one and why, and
    # so does the log (where an operator looks when a rollout cost requests).
    error = f"{service} service failed: {exc.details() or exc.code().name}"
    logging.getLogger("emojivoto.web-svc").warning("500: %s (%s)", error, exc.code().name)
    return 500, {"error": error, "grpc_status": exc.code().name}


async def run() -> None:
    log = lifecycle.configure_logging("web-svc")
    # getaddrinfo, so names mapped in /etc/hosts or by the pod's resolver work as they do for curl.
    os.environ.setdefault("GRPC_DNS_RESOLVER", "native")
    stop = lifecycle.stop_on_signals()
    emoji_host = lifecycle.env_str("EMOJISVC_HOST", "emoji-svc.emojivoto:8080")
    voting_host = lifecycle.env_str("VOTINGSVC_HOST", "voting-svc.emojivoto:8080")
    host = lifecycle.bind_address()
    sock = lifecycle.bind_tcp(host, lifecycle.env_int("WEB_PORT", 8080))
    async with (
        grpc.aio.insecure_channel(emoji_host) as emoji_channel,
        grpc.aio.insecure_channel(voting_host) as voting_channel,
    ):
        app = WebApp(
            emoji=emoji_pb2_grpc.EmojiServiceStub(emoji_channel),
            voting=voting_pb2_grpc.VotingServiceStub(voting_channel),
        )
        port = sock.getsockname()[1]
        log.info(
            lifecycle.listening_line("HTTP", host, port)
            + f" emoji={emoji_host} voting={voting_host}"
        )
        await asgi.serve(app, sock=sock, stop=stop)
    log.info("stopped")


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
