"""Who is calling the control plane's agent port: one server interceptor authenticates every
call's bearer token as a node's agent before a service sees the call.

`AgentAuthInterceptor(authenticator, refused={service: hook})` goes on the agent port's server
(every service there is for agents; `skip` names services a shared test server also carries).
A token that fails is answered UNAUTHENTICATED, an authenticator that cannot decide (API server
down) UNAVAILABLE, so agents retry; `hook(reason, message)` lets a service count its refusals.
Inside a call, `calling_agent()` is the agent that proved itself (None on a server without the
interceptor, i.e. one running without the CA, where agents are not authenticated), and
`check_agent(context, node)` refuses a caller that is another node's agent (PERMISSION_DENIED).
`peers={service: is_peer}` also admits, to that service only, a token `is_peer` accepts: another
control-plane replica (forwarding its agents' telemetry), seen inside the call as `PEER_REPLICA`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextvars import ContextVar
from typing import Any

import grpc

from controlplane.identity.authn import (
    AgentNode,
    AuthenticationFailed,
    Authenticator,
    AuthenticatorUnavailable,
    bearer_token,
)

Refused = Callable[[str, str], None]  # (reason, message)

# The caller a peer replica's call is admitted as: no node has this name.
PEER_REPLICA = AgentNode(node="\x00peer", subject="control-plane replica")

_CALLER: ContextVar[AgentNode | None] = ContextVar("nodemesh_agent_caller", default=None)


def calling_agent() -> AgentNode | None:
    return _CALLER.get()


async def check_agent(context: grpc.aio.ServicerContext, node: str) -> None:
    """Abort unless the authenticated caller is the agent of `node` (no-op unauthenticated)."""
    caller = calling_agent()
    if caller is not None and caller.node != node:
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"caller is the agent of {caller.node!r}, not {node!r}",
        )


class AgentAuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        authenticator: Authenticator,
        *,
        refused: Mapping[str, Refused] | None = None,
        skip: Collection[str] = (),
        peers: Mapping[str, Callable[[str], bool]] | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.refused = dict(refused or {})
        self.peers = dict(peers or {})
        self.skip = frozenset(skip)

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        service = details.method.rsplit("/", 2)[-2] if details.method.count("/") >= 2 else ""
        if service in self.skip:
            return handler
        hook = self.refused.get(service)
        is_peer = self.peers.get(service)

        async def admit(context: grpc.aio.ServicerContext) -> None:
            try:
                token = bearer_token(context.invocation_metadata())
                if is_peer is not None and is_peer(token):
                    agent = PEER_REPLICA
                else:
                    agent = await self.authenticator.authenticate(token)
            except AuthenticationFailed as e:
                if hook:
                    hook("unauthenticated", str(e))
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
            except AuthenticatorUnavailable as e:
                if hook:
                    hook("authenticator_unavailable", str(e))
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            # Set inside the call's own task: the service's code sees it, no other call does.
            _CALLER.set(agent)

        return _admitting(handler, admit)


Admit = Callable[[grpc.aio.ServicerContext], Awaitable[None]]


def _admitting(handler: grpc.RpcMethodHandler, admit: Admit) -> grpc.RpcMethodHandler:
    """`handler` with `admit(context)` awaited before its behaviour starts."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_single(handler.unary_unary, admit), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_single(handler.stream_unary, admit), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_many(handler.unary_stream, admit), **codec)
    return grpc.stream_stream_rpc_method_handler(_many(handler.stream_stream, admit), **codec)


def _single(behaviour: Callable[..., Any], admit: Admit) -> Callable[..., Any]:
    async def admitted(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await admit(context)
        return await behaviour(request, context)

    return admitted


def _many(behaviour: Callable[..., Any], admit: Admit) -> Callable[..., Any]:
    """A streaming behaviour is an async generator, or a coroutine writing to the context."""
    if not inspect.isasyncgenfunction(behaviour):
        return _single(behaviour, admit)

    async def admitted(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await admit(context)
        async for response in behaviour(request, context):
            yield response

    return admitted
