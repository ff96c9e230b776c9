"""TLS over a raw asyncio transport with ssl.MemoryBIO, keeping TCP's half-close.

asyncio's and uvloop's TLS transports close the whole connection when the peer sends
close_notify, so a client that shuts down its writing side and waits for the answer (HTTP/1.0,
netcat, many RPC tools) would lose it inside the tunnel. TLS 1.3 lets each side close its
writing direction alone; this layer maps that onto TCP semantics: `write_eof()` sends
close_notify, a received close_notify is `eof_received()`, and the other direction stays open.

`TlsLayer` is the raw transport's protocol; `TlsLayer.app` looks like an asyncio.Transport to
the application protocol (the relay's half). Records are decrypted one `read()` at a time
(up to 16 KiB each), never byte by byte, and not at all while the application is paused.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

# One TLS record's plaintext at most (2**14 bytes): OpenSSL returns no more from one read, and
# asking for more only makes Python allocate the larger bytes object first and shrink it after.
# 256 KiB reads left the heap fragmented under load (64 TLS pairs with traffic: 40 MB RSS
# against 25 MB with 16 KiB reads, and 20% more CPU; bench/tls_read_chunk.py).
READ_CHUNK = 16 * 1024
# Decrypted records handed on in one call, at most (see TlsLayer._read_app).
BATCH = 64 * 1024


class _Gone(asyncio.Protocol):
    """Stands in for the application protocol once the connection is lost (as asyncio's own
    transports drop theirs), so the layer and the application do not keep each other alive."""


_GONE = _Gone()


class TlsTransport:
    """The application's view: plaintext in, plaintext out."""

    def __init__(self, layer: TlsLayer) -> None:
        self._layer = layer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._layer.write(data)

    def write_eof(self) -> None:
        self._layer.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        self._layer.pause_reading()

    def resume_reading(self) -> None:
        self._layer.resume_reading()

    def is_reading(self) -> bool:
        return not self._layer.paused

    def close(self) -> None:
        self._layer.close()

    def abort(self) -> None:
        self._layer.abort()

    def is_closing(self) -> bool:
        raw = self._layer.raw
        return raw is None or raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._layer.sslobj
        raw = self._layer.raw
        return raw.get_extra_info(name, default) if raw is not None else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the plaintext to another protocol, as asyncio's transports allow (a tunnel
        connection turned multiplexed; the L7 path's streams)."""
        self._layer.app_protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._layer.app_protocol

    def get_write_buffer_size(self) -> int:
        raw = self._layer.raw
        return raw.get_write_buffer_size() if raw is not None else 0


class TlsLayer(asyncio.Protocol):
    def __init__(
        self,
        context: ssl.SSLContext,
        app: asyncio.Protocol,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )
        self.app_protocol = app
        self.raw: asyncio.Transport | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.paused = False
        self.eof_in = False  # close_notify (or a bare FIN) received
        self.eof_out = False  # close_notify sent
        self._drain_scheduled = False
        self.error: Exception | None = None

    @property
    def app(self) -> TlsTransport:
        """A fresh handle each time: the layer keeps none, so no reference cycle outlives the
        connection (its TLS objects and buffers go as soon as the relay lets go)."""
        return TlsTransport(self)

    # --- the raw side ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        self._step_handshake()

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if not self.handshake.done():
            self._step_handshake()
        if self.handshake.done() and not self.paused:
            self._read_app()

    def eof_received(self) -> bool:
        self.incoming.write_eof()
        if not self.handshake.done():
            self._fail_handshake(ConnectionError("connection closed during the TLS handshake"))
            return False
        if not self.paused:
            self._read_app()  # ends with the EOF; while paused, _drain gets there later
        return True  # our writing direction stays open

    def connection_lost(self, exc: Exception | None) -> None:
        # The raw transport holds us until it is freed; let go of it to break that cycle.
        self.raw = None
        if not self.handshake.done():
            self._fail_handshake(exc or ConnectionError("connection lost during the TLS handshake"))
            return
        app, self.app_protocol = self.app_protocol, _GONE
        app.connection_lost(self.error or exc)

    def pause_writing(self) -> None:
        self.app_protocol.pause_writing()

    def resume_writing(self) -> None:
        self.app_protocol.resume_writing()

    # --- TLS ------------------------------------------------------------------------------

    def _flush(self) -> None:
        if self.outgoing.pending and self.raw is not None and not self.raw.is_closing():
            self.raw.write(self.outgoing.read())

    def _step_handshake(self) -> None:
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            self._flush()  # the alert tells the peer why
            self._fail_handshake(exc)
            return
        self._flush()
        if not self.handshake.done():
            self.handshake.set_result(None)

    def _fail_handshake(self, exc: BaseException) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc)
            self.handshake.exception()  # retrieved here: the waiter may have gone
        if self.raw is not None:
            self.raw.abort()

    def _read_app(self) -> None:
        """Decrypt what came and hand it on: the records of one read from the socket go up
        together (up to BATCH bytes at a time), so a bulk stream costs the layers above one
        call, and the relay one write, per batch rather than per 16 KiB record."""
        incoming, sslobj = self.incoming, self.sslobj
        batch: list[bytes] = []
        size = 0
        while not self.paused and not self.eof_in:
            if not incoming.pending and not sslobj.pending() and not incoming.eof:
                # Nothing left to decrypt: stop here rather than have read() raise
                # SSLWantReadError, which costs more than the rest of the loop.
                break
            try:
                data = sslobj.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                # close_notify, or a FIN without one: either way the peer sends no more.
                data = b""
            except ssl.SSLError as exc:
                self._hand_on(batch)
                self._flush()
                self.error = exc
                if self.raw is not None:
                    self.raw.abort()
                return
            if not data:
                self._hand_on(batch)
                batch = []
                self.eof_in = True
                self.app_protocol.eof_received()
                break
            batch.append(data)
            size += len(data)
            if size >= BATCH:
                self._hand_on(batch)
                batch, size = [], 0
        self._hand_on(batch)
        # Reading may have produced handshake-level answers (key updates).
        self._flush()

    def _hand_on(self, batch: list[bytes]) -> None:
        if batch:
            self.app_protocol.data_received(batch[0] if len(batch) == 1 else b"".join(batch))

    # --- the application side -------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_out or self.raw is None or self.raw.is_closing():
            return
        self.sslobj.write(data)
        self._flush()

    def write_eof(self) -> None:
        if self.eof_out or self.raw is None:
            return
        self.eof_out = True
        try:
            self.sslobj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError, ValueError, OSError):
            pass  # close_notify is written; the peer's own comes (or not) when it is done
        self._flush()

    def pause_reading(self) -> None:
        self.paused = True
        if self.raw is not None and not self.raw.is_closing():
            self.raw.pause_reading()

    def resume_reading(self) -> None:
        if not self.paused:
            return
        self.paused = False
        if self.raw is not None and not self.raw.is_closing():
            self.raw.resume_reading()
        # Records that arrived while paused are still in the BIO; hand them over on the next
        # turn of the loop so that resuming never re-enters whoever resumed us.
        if self.handshake.done() and not self._drain_scheduled:
            self._drain_scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self.raw is not None and self.handshake.done():
            self._read_app()

    def close(self) -> None:
        if self.raw is None:
            return
        if self.handshake.done() and not self.handshake.exception():
            self.write_eof()
        self.raw.close()

    def abort(self) -> None:
        if self.raw is not None:
            self.raw.abort()
