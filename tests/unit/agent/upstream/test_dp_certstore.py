"""The certificate store: what is due when (injected clock), backoff, forgetting, waiting."""

from __future__ import annotations

import asyncio
import datetime

import pytest
from dp_identities import API, WEB, issue

from controlplane.identity import CertificateAuthority
from nodeagent.upstream.certstore import (
    REFRESH_AFTER,
    RETRY_MAX,
    CertStore,
    SessionCache,
    server_name,
)
from nodemesh.identity import CaMaterial


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(anchor: CaMaterial) -> CertStore:
    return CertStore(trust_anchors_pem=anchor.certificate_pem(), clock=Clock(0.0))


def test_wanted_identities_without_a_certificate_are_due(store: CertStore) -> None:
    store.want({WEB, API})
    assert store.due(0.0) == [API, WEB]
    assert store.next_due(0.0) == 0.0


def test_renewal_falls_due_two_thirds_into_the_lifetime(
    store: CertStore, authority: CertificateAuthority
) -> None:
    certified = issue(authority, WEB, lifetime=datetime.timedelta(hours=3))
    store.want({WEB})
    held = store.install(certified)
    start = certified.not_before.timestamp()
    end = certified.not_after.timestamp()
    assert held.renew_at == pytest.approx(start + (end - start) * 2 / 3)
    store.clock.now = start + 60  # type: ignore[attr-defined]
    assert store.due(store.clock()) == []
    assert store.next_due(store.clock()) == pytest.approx(held.renew_at - store.clock())
    assert store.due(held.renew_at - 1) == []
    assert store.due(held.renew_at) == [WEB]
    # Until it expires the old certificate still serves connections.
    store.clock.now = end - 1  # type: ignore[attr-defined]
    assert store.current(WEB) is held
    store.clock.now = end  # type: ignore[attr-defined]
    assert store.current(WEB) is None


def test_failures_back_off_doubling_up_to_a_cap(store: CertStore) -> None:
    store.want({WEB})
    delays = [store.failed(WEB, 100.0) for _ in range(10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == RETRY_MAX
    assert store.due(100.0 + RETRY_MAX - 1) == []
    assert store.due(100.0 + RETRY_MAX) == [WEB]


def test_identities_no_longer_wanted_are_dropped_with_their_keys(
    store: CertStore, authority: CertificateAuthority
) -> None:
    store.want({WEB, API})
    store.install(issue(authority, WEB))
    store.install(issue(authority, API))
    store.want({API})
    assert set(store.held) == {API}
    assert store.current(WEB) is None


async def test_a_connection_waits_for_a_certificate_that_is_being_fetched(
    store: CertStore, authority: CertificateAuthority
) -> None:
    store.want({WEB})
    waiter = asyncio.ensure_future(store.wait(WEB, 5.0))
    await asyncio.sleep(0.01)
    assert store.kicked.is_set()  # the identity client is asked to look now
    held = store.install(issue(authority, WEB))
    assert await waiter is held
    assert await store.wait(API, 0.05) is None  # nobody fetches it: the wait times out


def test_session_cache_reads_a_session_only_after_a_full_handshake_or_when_due() -> None:
    now = [1000.0]
    cache = SessionCache(clock=lambda: now[0])
    assert cache.wants("api", resumed=False) and cache.wants("api", resumed=True)  # none kept

    class Ticketed:
        has_ticket = True

    kept = Ticketed()
    cache.put("api", kept)  # type: ignore[arg-type]
    assert cache.get("api") is kept
    assert not cache.wants("api", resumed=True)  # resumed with the kept one: keep it
    assert cache.wants("api", resumed=False)  # the server refused it: take the new one
    now[0] += REFRESH_AFTER
    assert cache.wants("api", resumed=True)  # due for a fresh ticket


def test_session_cache_keeps_only_resumable_sessions() -> None:
    cache = SessionCache()
    cache.put("x", None)
    assert cache.get("x") is None and cache.misses == 1
    assert server_name(WEB) == "web.shop.identity.nodemesh"
    assert server_name("not a spiffe id") == "unknown.identity.nodemesh"
