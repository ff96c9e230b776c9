"""What an inbound tunnel connection (port 4143) gets, step by step (sans-io).

The shell (proxy/inbound.py `handle_tunnel`) reports what happened and does the step it gets
back; the decisions live here, as a table of outcomes:
- no destination table (never synced, none arrived in time): `Refuse`, before any TLS;
- mTLS configured: `WaitCert` for this pod's own certificate; none (or no identity): `Refuse`;
  no trust anchor (tests, bring-up): `ReadPreamble` of an unauthenticated client;
- the TLS handshake or the preamble failing: `Refuse`, naming the error;
- a preamble for an agent port or an IP that is not this pod: `Answer` NO_SUCH_TARGET;
- strict inbound mode and a client without an identity: `Answer` POLICY_DENIED;
- otherwise `Authorize` the connection (the pod's policy; the shell ends a denied one), then
  `Connect` to the app, and `Answer` ACCEPTED, or CONNECT_FAILED naming the app's port.
An `Answer` says whether the reply code must still be sent (the client asked for one and has
not had it: a per-request gate answers ACCEPTED itself) and whether the app's bytes skip
protocol detection (the source already decided).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from nodeagent.protocol import preamble as pre
from nodeagent.proxy.failclosed import NO_TABLE
from nodemesh import ports


def error_text(exc: BaseException) -> str:
    """An exception as an error line: its message, or its type when it has none (asyncio's
    timeouts carry no message)."""
    return str(exc) or type(exc).__name__


@dataclass(frozen=True, slots=True)
class Refuse:
    error: str  # the connection is closed without a reply


@dataclass(frozen=True, slots=True)
class WaitCert:
    identity: str  # then accept the tunnel (TLS, client certificate, preamble)


@dataclass(frozen=True, slots=True)
class ReadPreamble:
    pass  # no trust anchor: the plain preamble


@dataclass(frozen=True, slots=True)
class Authorize:
    port: int
    opaque: bool
    replied: bool  # False: the client still waits for its reply code


@dataclass(frozen=True, slots=True)
class Connect:
    port: int  # the app's port, in the pod's netns


@dataclass(frozen=True, slots=True)
class Answer:
    code: pre.ReplyCode
    error: str = ""  # empty when accepted
    reply: bool = False  # send `code` to the client first
    skip_detection: bool = False
    # Observe once: the source reports this connection's requests for us too (we said so in
    # the reply), so the relay detects the protocol but parses nothing.
    observed_at_source: bool = False

    @property
    def reply_flags(self) -> pre.ReplyFlags:
        if self.observed_at_source:
            return pre.ReplyFlags.OBSERVED_AT_SOURCE
        return pre.ReplyFlags.NONE

    @property
    def accepted(self) -> bool:
        return self.code is pre.ReplyCode.ACCEPTED


class TunnelAdmission:
    def __init__(
        self,
        *,
        pod_ip: str,
        identity: str,
        strict: bool,
        opaque_ports: Container[int] = (),
        tls: bool = True,
    ) -> None:
        self.pod_ip, self.identity, self.strict = pod_ip, identity, strict
        self.opaque_ports, self.tls = opaque_ports, tls
        self.header: pre.Preamble | None = None
        self.want_reply = False
        self.source_observes = False

    def start(self, *, table_known: bool) -> Refuse | WaitCert | ReadPreamble:
        if not table_known:
            return Refuse(NO_TABLE)
        if not self.tls:
            return ReadPreamble()
        if not self.identity:
            return Refuse("no certificate for this pod yet")
        return WaitCert(self.identity)

    def no_certificate(self) -> Refuse:
        """The pod's certificate did not come in time."""
        return Refuse(f"no certificate for {self.identity or 'this pod'} yet")

    def tunnel_failed(self, exc: BaseException) -> Refuse:
        """The handshake or the preamble failed."""
        return Refuse(f"tunnel: {error_text(exc)}")

    def preamble(self, header: pre.Preamble, *, client_id: str) -> Authorize | Answer:
        """The client (`client_id`: its identity, "" unauthenticated) sent `header`."""
        self.header = header
        self.want_reply = bool(header.flags & pre.PreambleFlags.WANT_REPLY)
        if header.target_port in ports.IN_POD or str(header.original_ip) != self.pod_ip:
            return self._answer(pre.ReplyCode.NO_SUCH_TARGET, f"no target {header.original_ip}")
        if self.strict and not client_id:
            return self._answer(
                pre.ReplyCode.POLICY_DENIED, "strict inbound mode: client not authenticated"
            )
        opaque = self._skip_detection() or header.target_port in self.opaque_ports
        # Only a source that hears our reply can know to report our side.
        offered = bool(header.flags & pre.PreambleFlags.SOURCE_OBSERVES)
        self.source_observes = self.want_reply and not opaque and offered
        return Authorize(header.target_port, opaque, replied=not self.want_reply)

    def authorized(self, *, gate: bool) -> Connect:
        """The policy let it through (`gate`: per request, and it answered ACCEPTED itself)."""
        assert self.header is not None, "authorized() before preamble()"
        if gate:
            # The gate answered ACCEPTED without flags and parses every request: ours to see.
            self.want_reply = self.source_observes = False
        return Connect(self.header.target_port)

    def connected(self) -> Answer:
        return self._answer(pre.ReplyCode.ACCEPTED, "")

    def connect_failed(self, exc: BaseException) -> Answer:
        assert self.header is not None, "connect_failed() before preamble()"
        port = self.header.target_port
        return self._answer(pre.ReplyCode.CONNECT_FAILED, f"app port {port}: {error_text(exc)}")

    def _skip_detection(self) -> bool:
        return self.header is not None and bool(
            self.header.flags & pre.PreambleFlags.SKIP_DETECTION
        )

    def _answer(self, code: pre.ReplyCode, error: str) -> Answer:
        return Answer(
            code,
            error,
            reply=self.want_reply,
            skip_detection=self._skip_detection(),
            observed_at_source=self.source_observes and code is pre.ReplyCode.ACCEPTED,
        )
