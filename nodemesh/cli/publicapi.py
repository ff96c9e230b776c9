"""The control plane's public API from the CLI: blocking gRPC calls, errors as one-line messages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click
import grpc

from nodemesh.api import public_pb2 as pb
from nodemesh.api import public_pb2_grpc as pb_grpc
from nodemesh.api import tap_pb2
from nodemesh.cli.target import TOKEN_ENV, Endpoint

CALL_TIMEOUT = 10.0


class ApiError(click.ClickException):
    """The control plane refused or did not answer; the message is for the user."""

    code: grpc.StatusCode | None = None


class PublicApi:
    def __init__(self, endpoint: Endpoint, *, timeout: float = CALL_TIMEOUT) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.channel = grpc.insecure_channel(endpoint.address)
        self.stub = pb_grpc.PublicStub(self.channel)
        self.metadata = (("authorization", f"Bearer {endpoint.token}"),) if endpoint.token else ()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> PublicApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, exc: grpc.RpcError) -> ApiError:
        error = self._message(exc)
        error.code = exc.code() if isinstance(exc, grpc.Call) else None
        return error

    def _message(self, exc: grpc.RpcError) -> ApiError:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
        ep = self.endpoint
        at = ep.address if ep.where == ep.address else f"{ep.where} at {ep.address}"
        if code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.NOT_FOUND,
        ):
            return ApiError(details)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            hint = (
                f"set {TOKEN_ENV} to a token the cluster accepts"
                if not ep.token
                else "your token was not accepted"
            )
            return ApiError(
                f"the control plane ({at}) does not know who you are: {details} ({hint})"
            )
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return ApiError(
                f"the control plane ({at}) refused: {details} (ask for the nodemesh-tap or "
                "nodemesh-stats ClusterRole; see docs/security.md)"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            return ApiError(
                f"cannot reach the control plane ({at}): is it running? (nodemesh check)"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return ApiError(f"the control plane ({at}) did not answer in {self.timeout:.0f} s")
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return ApiError(f"the control plane ({at}) is too old for this command")
        name = code.name if code else "error"
        return ApiError(f"the control plane ({at}) failed: {name}: {details}")

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(
                request, timeout=self.timeout, wait_for_ready=False, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def stat(self, request: pb.StatRequest) -> pb.StatResponse:
        return self._call("Stat", request)

    def routes(self, request: pb.RoutesRequest) -> pb.RoutesResponse:
        return self._call("Routes", request)

    def edges(self, request: pb.EdgesRequest) -> pb.EdgesResponse:
        return self._call("Edges", request)

    def workloads(self, namespace: str = "") -> pb.ListWorkloadsResponse:
        return self._call("ListWorkloads", pb.ListWorkloadsRequest(namespace=namespace))

    def nodes(self) -> pb.ListNodesResponse:
        return self._call("ListNodes", pb.ListNodesRequest())

    def version(self) -> pb.VersionResponse:
        return self._call("Version", pb.VersionRequest())

    def tap_for(
        self, request: pb.TapRequest, *, seconds: float | None
    ) -> Iterator[tap_pb2.TapEvent]:
        """Events until the caller stops iterating or `seconds` pass (then the stream ends
        quietly); the stream is cancelled either way."""
        call = self.stub.Tap(request, timeout=seconds, metadata=self.metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            code = exc.code()
            ended = code == grpc.StatusCode.CANCELLED or (
                seconds is not None and code == grpc.StatusCode.DEADLINE_EXCEEDED
            )
            if not ended:
                raise self._error(exc) from None
        finally:
            call.cancel()

    def check_namespace(self, namespace: str) -> None:
        """Fail with a clear line when the index knows namespaces and `namespace` is not one.
        A caller who may not list workloads everywhere skips this: the call itself decides."""
        try:
            known = self.workloads().namespaces_meshed
        except ApiError as exc:
            if exc.code == grpc.StatusCode.PERMISSION_DENIED:
                return
            raise
        if known and namespace not in known:
            raise ApiError(
                f"namespace {namespace!r} does not exist (namespaces: {', '.join(sorted(known))})"
            )
