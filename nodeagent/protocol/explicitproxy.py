"""Explicit proxy requests (router mode): what an app configured with HTTP_PROXY sends (sans-io).

Two shapes come in on the agent's router port: `CONNECT host:port HTTP/1.1` (a tunnel for TLS or
any TCP; the bytes after our 200 are the app's own) and absolute-form HTTP/1.x
(`GET http://web-svc.emojivoto/ HTTP/1.1`), which the origin server must receive in origin form
(RFC 9112 3.2.1: a client sends only the path to an origin server). `parse_head` reads the first
request's head; `OriginForm` is the relay's gate that rewrites every later request of the same
connection as it streams past, tracking message framing (Content-Length, chunked) so a body is
never mistaken for a head. A later request for another authority ends the connection (the
router joined it to one upstream): HTTP clients open a new one and send the request again.

A router-compatible Service (`nodemesh.io/router: "true"`, Linkerd 1's linkerd-service pattern)
is parsed `host_routed`: besides those two shapes, an origin-form request (`GET / HTTP/1.1` to
the router's own address) names its destination in its `Host` header and goes upstream as it
came; a later request of the connection naming another Host ends the connection the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 16 * 1024
_TOKEN = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Hop-by-hop headers meant for the proxy itself: never passed to the origin server.
_PROXY_ONLY = (b"proxy-connection", b"proxy-authorization")


class ProxyRequestError(ValueError):
    """The request cannot be proxied; `status` is the HTTP answer (400, 405...)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class ProxyRequest:
    connect: bool
    host: str  # lower-cased; an IPv4 literal or a name
    port: int
    # The head to send upstream (HTTP: origin form; CONNECT: nothing) and its length as read.
    head: bytes
    consumed: int
    method: str = ""
    path: str = ""
    # The port was written (host:port); when not, the Service's only port may stand in for 80.
    port_given: bool = True


def head_complete(data: bytes | bytearray) -> int:
    """The length of the first head in `data` (through its blank line), 0 if not all there."""
    end = data.find(b"\r\n\r\n")
    return end + 4 if end >= 0 else 0


def split_authority(authority: str, *, default_port: int | None) -> tuple[str, int]:
    """`host[:port]` -> (host, port); IPv6 literals are refused (the mesh is IPv4)."""
    if not authority or "@" in authority or authority.startswith("["):
        raise ProxyRequestError(400, f"bad host {authority!r} (host[:port] expected)")
    host, sep, port_text = authority.rpartition(":")
    if not sep:
        host, port_text = authority, ""
    if not host or any(c in host for c in "/?#: "):
        raise ProxyRequestError(400, f"bad host {authority!r} (host[:port] expected)")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ProxyRequestError(400, f"bad port {port_text!r} in {authority!r}")
        port = int(port_text)
    elif default_port is None:
        raise ProxyRequestError(400, f"CONNECT needs host:port, got {authority!r}")
    else:
        port = default_port
    return host.lower().rstrip("."), port


def _request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[2].startswith(b"HTTP/1."):
        raise ProxyRequestError(400, f"bad request line {line[:200]!r}")
    return parts[0], parts[1], parts[2]


def _absolute(target: bytes) -> tuple[str, str]:
    """`http://authority/path?q` -> (authority, origin-form path)."""
    text = target.decode("latin-1")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ProxyRequestError(
            400, f"not a proxy request: target {text[:200]!r} (absolute http:// URL or CONNECT)"
        )
    if scheme.lower() != "http":
        raise ProxyRequestError(
            400, f"scheme {scheme!r} not proxied: use CONNECT for TLS (https_proxy)"
        )
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if path.startswith("?") or not path:
        path = "/" + path
    return authority, path


def _rewrite_headers(lines: list[bytes], host: bytes) -> list[bytes]:
    """Proxy-only headers out; `Host` is the target's authority (RFC 9112 3.2.2: a proxy
    ignores the Host it received with an absolute-form target), where the client put it."""
    out = []
    has_host = False
    for line in lines:
        name = line.split(b":", 1)[0].strip().lower()
        if name in _PROXY_ONLY:
            continue
        if name == b"host":
            if has_host:
                continue  # one Host only
            has_host = True
            line = b"Host: " + host
        out.append(line)
    if not has_host:
        out.insert(0, b"Host: " + host)
    return out


def host_header(lines: list[bytes]) -> str:
    """The authority of the (first) Host header of a request head's header lines."""
    for line in lines:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            return value.strip().decode("latin-1")
    raise ProxyRequestError(
        400, "no Host header: a request to a router Service names its destination in Host"
    )


def _has_port(authority: str) -> bool:
    return authority.rpartition(":")[2].isdigit() and ":" in authority


def parse_head(data: bytes | bytearray, *, host_routed: bool = False) -> ProxyRequest:
    """The first request of a connection to the router; `data` holds at least its whole head.
    `host_routed`: an origin-form request is routed by its Host header (a router Service)."""
    size = head_complete(data)
    if not size:
        raise ProxyRequestError(400, "incomplete request head")
    lines = bytes(data[: size - 4]).split(b"\r\n")
    method, target, version = _request_line(lines[0])
    if method == b"CONNECT":
        host, port = split_authority(target.decode("latin-1"), default_port=None)
        return ProxyRequest(True, host, port, b"", size, method="CONNECT")
    if host_routed and target.startswith(b"/"):
        authority = host_header(lines[1:])
        host, port = split_authority(authority, default_port=80)
        path = target.decode("latin-1")
        return ProxyRequest(
            False, host, port, bytes(data[:size]), size, method=method.decode(), path=path,
            port_given=_has_port(authority),
        )  # fmt: skip
    authority, path = _absolute(target)
    host, port = split_authority(authority, default_port=80)
    head = _compose(method, path.encode("latin-1"), version, lines[1:], authority)
    return ProxyRequest(
        False, host, port, head, size, method=method.decode(), path=path,
        port_given=_has_port(authority),
    )  # fmt: skip


def _compose(
    method: bytes, path: bytes, version: bytes, headers: list[bytes], authority: str
) -> bytes:
    kept = _rewrite_headers(headers, authority.encode("latin-1"))
    return b"\r\n".join([method + b" " + path + b" " + version, *kept]) + b"\r\n\r\n"


def _body_framing(head: bytes) -> tuple[bool, int]:
    """(chunked, content length) of a request head."""
    chunked, length = False, 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError as exc:
                raise ProxyRequestError(400, f"bad Content-Length {value.strip()!r}") from exc
    return chunked, length


class OriginForm:
    """The router relay's gate for HTTP: every request of the connection leaves in origin form.

    `client()` takes what the app sends (a head already in origin form passes unchanged: the
    router rewrote the first one) and returns what goes upstream; `server()` passes responses
    through. Bodies are counted (or their chunks followed) so only request heads are rewritten.
    """

    def __init__(self, *, host: str, port: int, host_routed: bool = False) -> None:
        self.authority = (host, port)
        self.host_routed = host_routed
        self.buf = bytearray()
        self.state = "head"
        self.remaining = 0
        self.closed = False
        self.requests = 0

    def _after_head(self, head: bytes) -> None:
        self.requests += 1
        chunked, length = _body_framing(head)
        if chunked:
            self.state = "chunk-size"
        elif length:
            self.state, self.remaining = "body", length
        else:
            self.state = "head"

    def server(self, data: bytes) -> tuple[bytes, bool]:
        return data, False

    def client(self, data: bytes) -> tuple[bytes, bytes, bool]:
        if self.closed:
            return b"", b"", True
        self.buf += data
        out = bytearray()
        while self.buf:
            if self.state == "body" or self.state == "chunk-data":
                take = min(self.remaining, len(self.buf))
                out += self.buf[:take]
                del self.buf[:take]
                self.remaining -= take
                if self.remaining:
                    break
                self.state = "chunk-size" if self.state == "chunk-data" else "head"
                continue
            if self.state in ("chunk-size", "trailer"):
                end = self.buf.find(b"\r\n")
                if end < 0:
                    if len(self.buf) > MAX_HEAD:
                        return self._fail(out)
                    break
                line = bytes(self.buf[: end + 2])
                del self.buf[: end + 2]
                out += line
                if self.state == "trailer":
                    if line == b"\r\n":
                        self.state = "head"
                    continue
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    return self._fail(out)
                if size == 0:
                    self.state = "trailer"
                else:
                    self.state, self.remaining = "chunk-data", size + 2  # data and its CRLF
                continue
            # A request head.
            size = head_complete(self.buf)
            if not size:
                if len(self.buf) > MAX_HEAD:
                    return self._fail(out)
                break
            head = bytes(self.buf[:size])
            del self.buf[:size]
            try:
                rewritten = self._rewrite(head)
            except ProxyRequestError:
                return self._fail(out)
            if rewritten is None:
                return self._fail(out)  # another authority: the client sends it again
            out += rewritten
            self._after_head(rewritten)
        return bytes(out), b"", False

    def _rewrite(self, head: bytes) -> bytes | None:
        lines = head[:-4].split(b"\r\n")
        method, target, version = _request_line(lines[0])
        if target.startswith(b"/"):  # already origin form: pass it on
            if self.host_routed:  # unless its Host names another destination
                authority = host_header(lines[1:])
                if split_authority(authority, default_port=80) != self.authority:
                    return None
            return head
        if method == b"CONNECT":
            return None
        authority, path = _absolute(target)
        if split_authority(authority, default_port=80) != self.authority:
            return None
        return _compose(method, path.encode("latin-1"), version, lines[1:], authority)

    def _fail(self, out: bytearray) -> tuple[bytes, bytes, bool]:
        self.closed = True
        self.buf.clear()
        return bytes(out), b"", True


def answer(status: int, reason: str) -> bytes:
    """A short plain-text answer from the router itself; the connection closes after it."""
    phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 504: "Gateway Timeout"}
    body = f"nodemesh router: {reason}\n".encode()
    return (
        f"HTTP/1.1 {status} {phrase.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"
