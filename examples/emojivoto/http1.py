"""HTTP/1.1 client messages without I/O: request bytes out, a response parsed from bytes in."""

from __future__ import annotations

import httptools


class MalformedResponse(ValueError):
    """The server's bytes are not a valid HTTP/1.x response."""


def get_request(target: str, *, host: str, user_agent: str = "emojivoto-vote-bot") -> bytes:
    """A keep-alive GET for `target` (path and query, already percent-encoded where needed)."""
    if not target.startswith("/") or any(c in target for c in " \r\n"):
        raise ValueError(f"not a request target: {target!r}")
    return (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        f"User-Agent: {user_agent}\r\n"
        "Accept: application/json\r\n"
        "\r\n"
    ).encode("ascii")


class ResponseParser:
    """Feeds bytes to httptools until one whole response (status, body) has arrived."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self.status: int | None = None
        self.complete = False
        self.keep_alive = False
        self.received = 0

    def feed(self, data: bytes) -> bool:
        """Consume `data`; True once the response is complete. Raises MalformedResponse."""
        self.received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise MalformedResponse(str(exc)) from exc
        return self.complete

    @property
    def body(self) -> bytes:
        return b"".join(self._body)

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
