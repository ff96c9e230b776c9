"""The plugin's side of the agent socket: one request, one reply, within a deadline."""

from __future__ import annotations

import socket
import time

from nodemesh_cni.protocol import (
    FrameBuffer,
    ProtocolError,
    Reply,
    Request,
    decode_reply,
    encode_request,
)


class AgentUnavailable(Exception):
    """The agent could not be reached or did not answer in time; worth trying again later."""


class AgentProtocolError(Exception):
    """The agent answered something this plugin cannot understand."""


def call_agent(socket_path: str, request: Request, *, timeout: float) -> Reply:
    """Send `request` to the agent at `socket_path` and return its reply.

    Raises AgentUnavailable when the socket is missing, refuses, breaks, or the whole exchange
    takes longer than `timeout` seconds; AgentProtocolError for a reply that does not decode or
    answers another request.
    """
    deadline = time.monotonic() + timeout
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(encode_request(request))
            frame = _read_frame(sock, deadline)
        except TimeoutError as exc:
            raise AgentUnavailable(f"no answer within {timeout:g}s") from exc
        except OSError as exc:
            raise AgentUnavailable(exc.strerror or str(exc)) from exc
    finally:
        sock.close()
    try:
        reply = decode_reply(frame)
    except ProtocolError as exc:
        raise AgentProtocolError(f"undecodable reply: {exc}") from exc
    if reply.id != request.id:
        raise AgentProtocolError(f"reply for request {reply.id!r}, expected {request.id!r}")
    return reply


def _read_frame(sock: socket.socket, deadline: float) -> bytes:
    buffer = FrameBuffer()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError(0, "agent closed the connection without answering")
        try:
            frames = buffer.feed(data)
        except ProtocolError as exc:
            raise AgentProtocolError(str(exc)) from exc
        if frames:
            return frames[0]
