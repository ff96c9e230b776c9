"""Workload certificates in memory, their TLS contexts, and when each must be fetched or renewed.

The store decides (sans-io, with the caller's clock); `identity_client` does the asking. Each
held identity has one server context (its tickets let peers resume) and one client context that
offers, per destination server name, the last TLS session it got there, so a new connection to
a known peer skips the certificate exchange. Keys live only in these objects and in OpenSSL.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nodeagent.protocol import mux
from nodemesh import certs
from nodemesh.spiffe import InvalidSpiffeId, SpiffeId

RETRY_FIRST = 0.5
RETRY_MAX = 30.0
# Sessions kept per client context (one per destination identity); more are dropped LRU-free,
# oldest first, which is plenty for the destinations one workload talks to.
MAX_SESSIONS = 1024
# A kept session is replaced by a fresh one this often (well inside OpenSSL's default ticket
# lifetime of 7200 s), so the ticket offered never runs out under steady traffic.
REFRESH_AFTER = 600.0
# Server side: one ticket per handshake (OpenSSL's default is two). Each ticket carries the
# session, the client's certificate chain included, encrypted: work on every connection.
SERVER_TICKETS = 1


def server_name(identity: str) -> str:
    """The TLS server name a tunnel client sends for a destination identity.

    Only used to key session tickets and to make captures readable; the server's identity is
    always checked from its certificate's URI SAN, never from this name.
    """
    try:
        sid = SpiffeId.parse(identity)
    except InvalidSpiffeId:
        return "unknown.identity.nodemesh"
    return f"{sid.service_account}.{sid.namespace}.identity.nodemesh"


class SessionCache:
    """The last resumable TLS session per server name, for one client context.

    A session is kept and offered again for every new connection until it is `REFRESH_AFTER`
    old (the server takes a TLS 1.3 ticket more than once; an expired one only costs a full
    handshake, after which the new session is stored). Reading a session from a connection is
    not free: CPython copies it through DER, peer certificates included (~0.3 ms here), so it
    is read only after a full handshake or when the kept one is due.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.sessions: dict[str, tuple[ssl.SSLSession, float]] = {}
        self.clock = clock
        self.hits = 0
        self.misses = 0

    def get(self, name: str) -> ssl.SSLSession | None:
        """The session to offer `name`, or None for a full handshake."""
        entry = self.sessions.get(name)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return entry[0]

    def wants(self, name: str, *, resumed: bool) -> bool:
        """Should the session of a connection to `name` just made be stored?"""
        if not resumed:
            return True
        entry = self.sessions.get(name)
        return entry is None or self.clock() - entry[1] >= REFRESH_AFTER

    def put(self, name: str, session: ssl.SSLSession | None) -> None:
        if session is None or not session.has_ticket:
            return
        self.sessions.pop(name, None)
        self.sessions[name] = (session, self.clock())
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.pop(next(iter(self.sessions)))

    def forget(self, name: str) -> None:
        self.sessions.pop(name, None)


@dataclass
class Held:
    """One identity's certificate and the contexts made from it."""

    certified: certs.CertifiedKey
    server: ssl.SSLContext
    client: ssl.SSLContext
    sessions: SessionCache
    renew_at: float
    expires_at: float


@dataclass
class _Retry:
    at: float = 0.0
    delay: float = RETRY_FIRST


@dataclass
class CertStore:
    trust_anchors_pem: bytes
    clock: Callable[[], float] = time.time
    resume: bool = True
    held: dict[str, Held] = field(default_factory=dict)
    wanted: set[str] = field(default_factory=set)
    _retry: dict[str, _Retry] = field(default_factory=dict)
    _arrived: dict[str, asyncio.Event] = field(default_factory=dict)
    kicked: asyncio.Event = field(default_factory=asyncio.Event)

    # --- what is wanted, what is due --------------------------------------------------------

    def want(self, identities: Iterable[str]) -> None:
        """Identities with pods on this node; keys of the others are dropped from memory."""
        self.wanted = set(identities)
        for gone in [i for i in self.held if i not in self.wanted]:
            del self.held[gone]
        for gone in [i for i in self._retry if i not in self.wanted]:
            del self._retry[gone]
        # Waiters for identities nobody on this node runs time out on their own.
        for gone in [i for i in self._arrived if i not in self.wanted]:
            del self._arrived[gone]

    def ask(self, identity: str) -> None:
        """A connection needs `identity` now: have the client look at once."""
        self.kicked.set()

    def due(self, now: float) -> list[str]:
        """Identities to ask the CA for now: missing or past their renewal time, not backing off."""
        out = []
        for identity in sorted(self.wanted):
            held = self.held.get(identity)
            if held is not None and held.renew_at > now:
                continue
            retry = self._retry.get(identity)
            if retry is not None and retry.at > now:
                continue
            out.append(identity)
        return out

    def next_due(self, now: float) -> float | None:
        """Seconds until something becomes due (0 if something is due now), None if nothing."""
        times = []
        for identity in self.wanted:
            held = self.held.get(identity)
            retry = self._retry.get(identity)
            at = held.renew_at if held is not None else now
            if retry is not None:
                at = max(at, retry.at)
            times.append(at)
        return max(min(times) - now, 0.0) if times else None

    # --- outcomes -------------------------------------------------------------------------

    def install(self, certified: certs.CertifiedKey) -> Held:
        identity = certified.identity
        sessions = SessionCache()
        client = certs.client_context(certified, trust_anchors_pem=self.trust_anchors_pem)
        server = certs.server_context(certified, trust_anchors_pem=self.trust_anchors_pem)
        # OP_NO_TICKET would only switch TLS 1.3 to stateful tickets: to issue none, say 0.
        server.num_tickets = SERVER_TICKETS if self.resume else 0
        # Offered by clients that multiplex app connections over one tunnel connection; a
        # client offering nothing gets the one-connection tunnel as before.
        server.set_alpn_protocols([mux.ALPN])
        held = Held(
            certified=certified,
            server=server,
            client=client,
            sessions=sessions,
            renew_at=certified.renew_at.timestamp(),
            expires_at=certified.not_after.timestamp(),
        )
        self.held[identity] = held
        self._retry.pop(identity, None)
        event = self._arrived.pop(identity, None)
        if event is not None:
            event.set()
        return held

    def failed(self, identity: str, now: float) -> float:
        """Asking failed: back off (doubling, capped); returns the delay chosen."""
        retry = self._retry.setdefault(identity, _Retry())
        retry.at = now + retry.delay
        delay = retry.delay
        retry.delay = min(retry.delay * 2, RETRY_MAX)
        return delay

    # --- used by connections --------------------------------------------------------------

    def current(self, identity: str) -> Held | None:
        held = self.held.get(identity)
        if held is None or held.expires_at <= self.clock():
            return None
        return held

    async def wait(self, identity: str, timeout: float) -> Held | None:
        """The identity's certificate, waiting up to `timeout` for it to arrive."""
        held = self.current(identity)
        if held is not None:
            return held
        event = self._arrived.setdefault(identity, asyncio.Event())
        self.ask(identity)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return None
        return self.current(identity)
