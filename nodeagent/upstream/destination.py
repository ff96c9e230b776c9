"""Follow the control plane's destination stream for this node, for as long as the agent runs.

Each update goes into the table and the table's changes to a callback. A broken stream is
reopened with jittered exponential backoff (a fresh snapshot comes with it); meanwhile the table
keeps the last state, so enrolment and routing go on while the control plane is away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from nodeagent.observe.metrics import DESTINATION_CONNECTED, DESTINATION_UPDATES
from nodeagent.upstream.table import DestinationTable, TableChanged
from nodemesh.api import destination_pb2 as pb
from nodemesh.api import destination_pb2_grpc as pb_grpc
from nodemesh.version import __version__

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.25
BACKOFF_MAX = 10.0


Token = Callable[[], str | None]  # the agent's bearer token now (None: send none)


def open_channel(
    address: str, *, insecure: bool, ca_file: Path | None = None, token: Token | None = None
) -> grpc.aio.Channel:
    """The agent's one channel to the control plane. Every call on it carries `token()` (read
    per call: projected tokens rotate) as `authorization: Bearer`: call credentials on TLS,
    and, where the channel is plaintext (tests, --controlplane-insecure), which gRPC gives no
    call credentials, the same metadata through an interceptor."""
    options = [
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    if insecure:
        interceptors = bearer_interceptors(token) if token is not None else None
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    roots = ca_file.read_bytes() if ca_file is not None else None
    creds = grpc.ssl_channel_credentials(roots)
    if token is not None:
        call_creds = grpc.metadata_call_credentials(_BearerToken(token), name="nodemesh-agent")
        creds = grpc.composite_channel_credentials(creds, call_creds)
    return grpc.aio.secure_channel(address, creds, options=options)


def _bearer(token: Token) -> tuple[tuple[str, str], ...]:
    value = token()
    return (("authorization", f"Bearer {value}"),) if value else ()


class _BearerToken(grpc.AuthMetadataPlugin):
    def __init__(self, token: Token) -> None:
        self.token = token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        try:
            metadata = _bearer(self.token)
        except (OSError, ValueError) as exc:  # an unreadable token file fails this call only
            callback((), exc)
            return
        callback(metadata, None)


class _WithBearer:
    """Adds the bearer token to a call's metadata (plaintext channels only, see open_channel)."""

    def __init__(self, token: Token) -> None:
        self.token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *_bearer(self.token))
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _UnaryUnary(_WithBearer, grpc.aio.UnaryUnaryClientInterceptor):
    pass


class _UnaryStream(_WithBearer, grpc.aio.UnaryStreamClientInterceptor):
    pass


class _StreamUnary(_WithBearer, grpc.aio.StreamUnaryClientInterceptor):
    pass


class _StreamStream(_WithBearer, grpc.aio.StreamStreamClientInterceptor):
    pass


def bearer_interceptors(token: Token) -> list[grpc.aio.ClientInterceptor]:
    return [kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


def read_token(path: Path, *, node: str) -> str:
    """The node's credential: a plain token file (re-read each time: projected tokens rotate)
    or the lab's tokens.json, a map of node name to token."""
    text = path.read_text().strip()
    if text.startswith("{"):
        tokens = json.loads(text)
        if node not in tokens:
            raise ValueError(f"{path} has no token for node {node!r}")
        return str(tokens[node])
    return text


class DestinationClient:
    def __init__(
        self,
        *,
        channel: grpc.aio.Channel,
        table: DestinationTable,
        on_change: Callable[[TableChanged], None],
    ) -> None:
        self.channel = channel
        self.table = table
        self.on_change = on_change
        self.connected = False
        self.streams = 0

    async def run(self) -> None:
        """Forever: subscribe, apply updates, back off and resubscribe when the stream ends."""
        stub = pb_grpc.DestinationStub(self.channel)
        delay = BACKOFF_FIRST
        while True:
            got_snapshot = False
            try:
                call = stub.Subscribe(
                    pb.SubscribeRequest(node=self.table.node, agent_version=__version__)
                )
                self.table.stream_restarted()
                self.streams += 1
                async for update in call:
                    change = self.table.apply(update)
                    DESTINATION_UPDATES.labels(update.WhichOneof("kind") or "none").inc()
                    if change is None:
                        continue
                    if change.snapshot and not got_snapshot:
                        got_snapshot = True
                        self._set_connected(True)
                        delay = BACKOFF_FIRST
                    self.on_change(change)
                log.warning("destination stream ended; reconnecting")
            except grpc.aio.AioRpcError as exc:
                level = logging.WARNING if got_snapshot or self.streams <= 1 else logging.DEBUG
                log.log(level, "destination stream: %s %s", exc.code().name, exc.details())
            except (ValueError, OSError) as exc:
                log.error("destination stream: %s", exc)
            finally:
                self._set_connected(False)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        DESTINATION_CONNECTED.set(1 if value else 0)
