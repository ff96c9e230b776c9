"""States and allowed transitions of each direction of an HTTP/1 connection, as tables."""

from __future__ import annotations

from enum import Enum, auto


class State(Enum):
    IDLE = auto()
    HEADERS = auto()
    BODY = auto()
    INTERIM = auto()  # a 1xx response other than 101, which is never the final one
    UPGRADE_PENDING = auto()  # request asked to switch; waiting for the server's answer
    TUNNEL = auto()

    # Members are singletons compared by identity: hash them the same way, in C. Enum's own
    # __hash__ is Python code, and these are looked up several times per request.
    __hash__ = object.__hash__


class Trigger(Enum):
    BEGIN = auto()
    HEADERS_FINAL = auto()
    HEADERS_INTERIM = auto()
    COMPLETE = auto()
    UPGRADE_REQUESTED = auto()
    UPGRADE_ACCEPTED = auto()
    UPGRADE_DECLINED = auto()
    SWITCHED = auto()

    __hash__ = object.__hash__


# Allowed transitions per direction, as h11 tabulates them: a pair missing here is a
# ProtocolError, never a silent fall-through.
CLIENT_TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.IDLE, Trigger.BEGIN): State.HEADERS,
    (State.HEADERS, Trigger.HEADERS_FINAL): State.BODY,
    (State.BODY, Trigger.COMPLETE): State.IDLE,
    (State.IDLE, Trigger.UPGRADE_REQUESTED): State.UPGRADE_PENDING,
    (State.UPGRADE_PENDING, Trigger.UPGRADE_ACCEPTED): State.TUNNEL,
    (State.UPGRADE_PENDING, Trigger.UPGRADE_DECLINED): State.IDLE,
}
SERVER_TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (State.IDLE, Trigger.BEGIN): State.HEADERS,
    (State.HEADERS, Trigger.HEADERS_INTERIM): State.INTERIM,
    (State.INTERIM, Trigger.COMPLETE): State.IDLE,
    (State.HEADERS, Trigger.HEADERS_FINAL): State.BODY,
    (State.BODY, Trigger.COMPLETE): State.IDLE,
    (State.HEADERS, Trigger.SWITCHED): State.TUNNEL,
    # llhttp still reports the end of a 101 or a CONNECT 2xx message after the switch.
    (State.TUNNEL, Trigger.COMPLETE): State.TUNNEL,
}
