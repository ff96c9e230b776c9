"""A gRPC client interceptor that sends `authorization: Bearer <token>` on every call, as the
CLI and the dashboard do."""

from __future__ import annotations

import grpc


def bearer(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors for `grpc.aio.insecure_channel(..., interceptors=bearer(token))` (gRPC
    files each interceptor under one call type only, hence one per type)."""
    return [_Unary(token), _Stream(token)]


def _details(token: str, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    md = grpc.aio.Metadata(*(d.metadata or ()))
    md.add("authorization", f"Bearer {token}")
    return grpc.aio.ClientCallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready)


class _Unary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(_details(self.token, details), request)


class _Stream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(_details(self.token, details), request)
