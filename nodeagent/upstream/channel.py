"""The agent's one connection to the control plane, on grpclib (gRPC over h2 in pure Python).

The agent is a gRPC client only; grpcio's C core would cost every agent process ~10-16 MB of
resident memory for four calls, grpclib well under 1 MB on top of h2 and ssl, which the agent
loads anyway. What grpcio did for us is done here: the TLS context (the control plane's CA,
its host name checked, ALPN h2), keepalive pings, the receive size limit, the bearer token on
every call, and failures of all kinds turned into one exception with a gRPC status name.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message
from grpclib.client import Channel, Handler, Stream
from grpclib.config import Configuration
from grpclib.const import Cardinality, Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.events import SendRequest, listen
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.protocol import Connection, H2Protocol

UNARY_STREAM = Cardinality.UNARY_STREAM
Token = Callable[[], str | None]  # the agent's bearer token now (None: send none)
S = TypeVar("S", bound=Message)
R = TypeVar("R", bound=Message)

# Destination snapshots come in parts far below this; it is what the grpcio channel allowed.
MAX_RECEIVE_BYTES = 64 * 1024 * 1024
KEEPALIVE_SECONDS = 20.0
KEEPALIVE_TIMEOUT_SECONDS = 10.0
DEFAULT_TLS_PORT = 443  # gRPC's default for a target without a port


class CallFailed(Exception):
    """A call to the control plane ended without success: its gRPC status (`code`, a
    `grpclib.const.Status` name such as "UNAVAILABLE") and what was said about it."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


@contextlib.contextmanager
def translated() -> Iterator[None]:
    """Failures of a call, as grpclib and the socket raise them, as CallFailed."""
    try:
        yield
    except GRPCError as exc:  # the control plane's status (or grpclib's reading of a bad answer)
        raise CallFailed(exc.status.name, exc.message or "") from exc
    except StreamTerminatedError as exc:  # connection lost, stream reset, keepalive unanswered
        raise CallFailed(Status.UNAVAILABLE.name, str(exc)) from exc
    except OSError as exc:  # connect refused or timed out, name unknown, TLS handshake failed
        if isinstance(exc, TimeoutError) and exc.errno is None:  # grpclib's: the deadline
            raise CallFailed(Status.DEADLINE_EXCEEDED.name, str(exc)) from exc
        raise CallFailed(Status.UNAVAILABLE.name, f"{type(exc).__name__}: {exc}") from exc


class _LimitedCodec(ProtoCodec):
    """Protobuf, refusing messages over MAX_RECEIVE_BYTES as grpcio's receive limit did."""

    def decode(self, data: bytes, message_type: Any) -> Any:
        if len(data) > MAX_RECEIVE_BYTES:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"received message larger than max ({len(data)} vs. {MAX_RECEIVE_BYTES})",
            )
        return super().decode(data, message_type)


def parse_target(address: str) -> tuple[str | None, int | None, str | None]:
    """A gRPC target (`host:port`, `[v6]:port`, `dns:///host:port`, `unix:path`,
    `unix:///path`) as (host, port, unix socket path)."""
    if address.startswith("unix:"):
        path = address.removeprefix("unix:")
        return None, None, ("/" + path.lstrip("/")) if path.startswith("//") else path
    address = address.removeprefix("dns:///")
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    return host, int(port) if port else DEFAULT_TLS_PORT, None


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The control plane's certificate must chain to `ca_file` (or the system's roots) and
    name the host dialled; TLS 1.2 or later, h2 by ALPN as gRPC needs."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


class _AbortingConnection(Connection):
    """grpclib closes a connection (keepalive ping unanswered, channel closed) with
    transport.close(). On TLS that waits for the peer's close_notify, up to 30 s against a
    peer that is gone, and only then do the connection's streams learn that it is lost: the
    destination stream would sit on a dead connection for half a minute more. Abort instead:
    the socket closes now and connection_lost ends every stream at once, as grpcio did."""

    def close(self) -> None:
        if not self.is_closing():
            self._transport.abort()
        super().close()


class _Protocol(H2Protocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.connection.__class__ = _AbortingConnection


class _Channel(Channel):
    """grpclib's channel, with connections closed by abort (see _AbortingConnection), and a
    connection grpclib closed itself (keepalive) dropped before the next call is made on it
    (grpclib forgets it only once its transport reports the loss)."""

    def _protocol_factory(self) -> H2Protocol:
        return _Protocol(Handler(), self._config, self._h2_config)

    async def __connect__(self) -> H2Protocol:
        protocol = self._protocol
        if self._connected and protocol is not None and protocol.connection.is_closing():
            protocol.processor.close("Connection closed")  # its streams end, it is forgotten
        return await super().__connect__()


def open_channel(
    address: str,
    *,
    insecure: bool,
    ca_file: Path | None = None,
    token: Token | None = None,
    server_name: str | None = None,
) -> Channel:
    """The agent's one channel to the control plane (connected on its first call, again on the
    first call after a loss). Every call on it carries `token()` (read per call: projected
    tokens rotate) as `authorization: Bearer`. `server_name`: the name the certificate must
    carry when it is not the host dialled (tests dialling an IP)."""
    host, port, path = parse_target(address)
    if path is not None and not insecure and server_name is None:
        server_name = "localhost"  # as grpcio: a unix socket's authority
    config = Configuration(
        _keepalive_time=KEEPALIVE_SECONDS,
        _keepalive_timeout=KEEPALIVE_TIMEOUT_SECONDS,
        _keepalive_permit_without_calls=True,
        # grpclib's own default spaces pings without data 300 s apart; grpcio's were 20 s.
        _http2_min_sent_ping_interval_without_data=KEEPALIVE_SECONDS,
        ssl_target_name_override=server_name,
    )
    channel = _Channel(
        host,
        port,
        path=path,
        ssl=None if insecure else tls_context(ca_file),
        config=config,
        codec=_LimitedCodec(),
    )
    if token is not None:
        listen(channel, SendRequest, _bearer(token))
    return channel


def _bearer(token: Token) -> Callable[[SendRequest], Any]:
    async def add(event: SendRequest) -> None:
        value = token()  # an unreadable token file fails this call only
        if value:
            event.metadata["authorization"] = f"Bearer {value}"

    return add


class StreamCall(Generic[S, R]):
    """One streaming call: `write` messages, iterate over the answers; a failure raises
    CallFailed with the control plane's status when it sent one. The iteration ends when the
    control plane ends the call with OK."""

    def __init__(self, stream: Stream[S, R]) -> None:
        self._stream = stream
        self._over: CallFailed | None = None  # why it is over, once it is
        self._exited = False

    async def write(self, message: S) -> None:
        if self._over is not None:
            raise self._over
        try:
            await self._stream.send_message(message)
        except Exception as exc:
            raise await self._failed(exc) from exc

    def __aiter__(self) -> AsyncIterator[R]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[R]:
        if self._over is not None:
            raise self._over
        while True:
            try:
                message = await self._stream.recv_message()
            except Exception as exc:
                failure = await self._failed(exc)
                if failure.code == Status.OK.name:
                    return  # ended with OK, then reset (see _ended_ok)
                raise failure from exc
            if message is None:
                break
            yield message
        # The control plane ended its side: its status came with it.
        failure = await self._failed(None)
        if failure.code != Status.OK.name:
            raise failure

    async def _failed(self, exc: Exception | None) -> CallFailed:
        """The call is over (`exc`: what grpclib raised; None: the control plane ended it):
        its status, as CallFailed (code OK for a clean end). A stream grpclib saw terminated
        (reset, connection lost) may still have got its status in trailers, and leaving
        grpclib's stream context raises that status."""
        if self._over is None:
            try:
                with translated():
                    await self._exit(exc or StreamTerminatedError("the call ended"))
                    if exc is not None and not _ended_ok(self._stream):
                        raise exc
                self._over = CallFailed(Status.OK.name, "the control plane ended the call")
            except CallFailed as failure:
                self._over = failure
        return self._over

    async def _exit(self, exc: BaseException) -> None:
        """Leave grpclib's stream context once: it resets the stream if it is still open
        (RST_STREAM, as grpcio's cancel) and, for a terminated stream, raises the status the
        trailers carried."""
        if not self._exited:
            self._exited = True
            await self._stream.__aexit__(type(exc), exc, exc.__traceback__)


def _ended_ok(stream: Stream[Any, Any]) -> bool:
    """Whether the control plane ended the call with OK trailers. A grpc server that ends a
    call while the agent's side is still open (tap, telemetry) follows its trailers with
    RST_STREAM(NO_ERROR), and grpclib then reports the reset, not the status: it is read here
    from grpclib's protocol stream (not public API: grpclib is pinned below 0.5, and
    test_agent_channel's clean-end case fails if this stops working)."""
    trailers = getattr(getattr(stream, "_stream", None), "trailers", None)
    return trailers is not None and dict(trailers).get("grpc-status") == "0"


@contextlib.asynccontextmanager
async def open_stream(
    channel: Channel,
    method: str,
    request_type: type[S],
    reply_type: type[R],
    *,
    cardinality: Cardinality = Cardinality.STREAM_STREAM,
) -> AsyncIterator[StreamCall[S, R]]:
    """A streaming call for the `async with` block; leaving the block while the call still
    runs cancels it (RST_STREAM)."""
    stream = channel.request(method, cardinality, request_type, reply_type)
    await stream.__aenter__()
    call = StreamCall(stream)
    try:
        try:
            await stream.send_request()
        except Exception as exc:
            raise await call._failed(exc) from exc
        yield call
    except BaseException as exc:
        with contextlib.suppress(Exception):
            await call._exit(exc)
        raise
    with contextlib.suppress(Exception):
        await call._exit(asyncio.CancelledError("the agent left the call"))


async def unary(
    channel: Channel, method: str, request: S, reply_type: type[R], *, timeout: float
) -> R:
    """One unary call with its deadline; failures raise CallFailed."""
    with translated():
        async with channel.request(
            method, Cardinality.UNARY_UNARY, type(request), reply_type, timeout=timeout
        ) as stream:
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
        if reply is None:
            raise GRPCError(Status.UNKNOWN, "the control plane ended the call without a reply")
        return reply
