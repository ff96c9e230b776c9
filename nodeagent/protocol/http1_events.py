"""Events the HTTP/1 observer reports; timing is the caller's, none of them carries a clock."""

from __future__ import annotations

from dataclasses import dataclass

# Plain slotted dataclasses (not frozen: that costs an object.__setattr__ per field, per event).


@dataclass(slots=True)
class RequestStarted:
    seq: int
    method: str
    authority: str
    path: str
    version: str


@dataclass(slots=True)
class RequestEnded:
    seq: int
    body_bytes: int


@dataclass(slots=True)
class ResponseStarted:
    seq: int
    status: int


@dataclass(slots=True)
class ResponseEnded:
    seq: int
    body_bytes: int


@dataclass(slots=True)
class Upgraded:
    """101 Switching Protocols: the rest of the connection is opaque."""

    seq: int
    protocol: str


@dataclass(slots=True)
class ConnectTunnel:
    """2xx to CONNECT: the rest of the connection is opaque."""

    seq: int
    authority: str


@dataclass(slots=True)
class ExchangeAborted:
    """The connection closed before this exchange's response was complete."""

    seq: int
    reason: str


Http1Event = (
    RequestStarted
    | RequestEnded
    | ResponseStarted
    | ResponseEnded
    | Upgraded
    | ConnectTunnel
    | ExchangeAborted
)
