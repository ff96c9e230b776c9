"""Keep a certificate for every workload identity with a pod on this node, from Identity/Certify.

For the identities the store says are due, have a child process make fresh keys and CSRs
(nodeagent.upstream.keygen: one child per batch, so `cryptography` stays out of the agent),
send each CSR over the agent's
channel to the control plane (authenticated as the node with its bearer token, as the
destination client does) and install the answer. Failures back off per identity; certificates
already held keep serving until they expire, so a control plane that is away for a while costs
nothing but the renewals it delays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nodeagent import podplan
from nodeagent.upstream import keygen
from nodeagent.upstream.certstore import CertStore
from nodeagent.upstream.channel import CallFailed, Channel, unary
from nodeagent.upstream.table import DestinationTable
from nodemesh import certs
from nodemesh.api import identity_pb2

log = logging.getLogger(__name__)

CERTIFY_TIMEOUT = 10.0
# Longest sleep between looks at the table, in case a kick was missed.
IDLE_WAKEUP = 5.0
CERTIFY = "/nodemesh.identity.v1.Identity/Certify"
PARALLEL = 4


def identities_on_node(table: DestinationTable) -> set[str]:
    """The SPIFFE IDs of meshed pods of this node that still run (or are about to)."""
    return {
        p.identity
        for p in table.pods.values()
        if p.identity and podplan.wants_mesh(p) and p.phase not in ("Succeeded", "Failed")
    }


class IdentityClient:
    def __init__(
        self,
        *,
        channel: Channel,
        store: CertStore,
        wanted: Callable[[], set[str]],
        timeout: float = CERTIFY_TIMEOUT,
        keymaker: tuple[str, ...] = keygen.KEYMAKER,
    ) -> None:
        self.channel = channel
        self.store = store
        self.wanted = wanted
        self.timeout = timeout
        self.keymaker = keymaker
        # A key made for an attempt that got no certificate (refused: the control plane has not
        # seen the pod yet; or away) serves the next attempt too: a new pod's retries cost no
        # key-maker run each (a child process: ~0.2 s of CPU, seconds on a busy node).
        self.spare: dict[str, keygen.KeyAndCsr] = {}
        self.issued = 0
        self.failures = 0

    def kick(self) -> None:
        """Something changed (the table, a connection waiting): look again now."""
        self.store.kicked.set()

    async def run(self) -> None:
        limit = asyncio.Semaphore(PARALLEL)

        async def one(identity: str, made: keygen.KeyAndCsr | str) -> None:
            async with limit:
                await self.certify(identity, made)

        while True:
            self.store.kicked.clear()
            self.store.want(self.wanted())
            for gone in self.spare.keys() - self.store.wanted:
                del self.spare[gone]
            due = self.store.due(self.store.clock())
            if due:
                made: dict[str, keygen.KeyAndCsr | str] = {
                    i: self.spare.pop(i) for i in due if i in self.spare
                }
                fresh = [i for i in due if i not in made]
                if fresh:
                    try:
                        made |= await keygen.make_keys(fresh, command=self.keymaker)
                    except keygen.KeygenError as exc:
                        for identity in fresh:
                            self._failed(identity, str(exc))
                await asyncio.gather(*(one(i, m) for i, m in made.items()))
            wait = self.store.next_due(self.store.clock())
            wait = IDLE_WAKEUP if wait is None else min(max(wait, 0.01), IDLE_WAKEUP)
            try:
                await asyncio.wait_for(self.store.kicked.wait(), wait)
            except TimeoutError:
                pass

    async def certify(self, identity: str, made: keygen.KeyAndCsr | str | None = None) -> bool:
        """Ask for `identity` once (with `made`, or a key made now); install it or back off.

        True when a certificate arrived."""
        try:
            if made is None:
                made = (await keygen.make_keys([identity], command=self.keymaker))[identity]
            if isinstance(made, str):
                raise ValueError(made)
            request = identity_pb2.CertifyRequest(csr=made.csr_pem, spiffe_id=identity)
            reply = await unary(
                self.channel,
                CERTIFY,
                request,
                identity_pb2.CertifyResponse,
                timeout=self.timeout,
            )
            certified = certs.CertifiedKey.from_pem(
                identity, made.key_pem, reply.certificate_chain_pem
            )
        except CallFailed as exc:
            if isinstance(made, keygen.KeyAndCsr):
                self.spare[identity] = made  # never certified: good for the next attempt
            self._failed(identity, f"{exc.code}: {exc.details}")
            return False
        except (OSError, ValueError, certs.PeerRejected) as exc:
            self._failed(identity, str(exc))
            return False
        if identity not in self.store.wanted:
            return False  # the last pod of it left while we asked
        self.store.install(certified)
        self.issued += 1
        log.info("certificate for %s until %s", identity, certified.not_after.isoformat())
        return True

    def _failed(self, identity: str, why: str) -> None:
        self.failures += 1
        delay = self.store.failed(identity, self.store.clock())
        held = self.store.current(identity)
        level = logging.WARNING if held is None else logging.INFO
        log.log(level, "certificate for %s: %s (again in %.1fs)", identity, why, delay)
