"""TLS termination: one server context whose SNI callback hands each handshake the context of
the certificate its Ingress rules give that host (checked Secrets only, see ingress.certs)."""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Callable

from ingress.certs import CertPair
from ingress.state import Snapshot

log = logging.getLogger(__name__)


def _new_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class Terminator:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot
        self._contexts: dict[tuple[str, str], ssl.SSLContext] = {}
        self.context = _new_context()
        self.context.sni_callback = self._sni

    def context_for(self, pair: CertPair) -> ssl.SSLContext:
        key = (pair.secret, pair.version)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = _new_context()
            # The ssl module loads keys from files only: a private temporary file, gone at once.
            fd, path = tempfile.mkstemp(prefix="nodemesh-ingress-", suffix=".pem")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(pair.cert_pem + b"\n" + pair.key_pem)
                ctx.load_cert_chain(path)
            finally:
                os.unlink(path)
            self._contexts = {k: v for k, v in self._contexts.items() if k[0] != pair.secret}
            self._contexts[key] = ctx
        return ctx

    def _sni(self, sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        pair = self.snapshot().cert_for(name)
        if pair is None:
            log.info("TLS handshake for %r refused: no Ingress certificate serves it", name)
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        try:
            sock.context = self.context_for(pair)
        except (ssl.SSLError, OSError) as e:
            log.warning("Secret %s cannot be loaded for TLS: %s", pair.secret, e)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None
