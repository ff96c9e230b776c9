"""The kubernetes source, through the real client, against an API server on loopback."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import AsyncIterator, Iterator

import cp_objects as k
import pytest
from fake_apiserver import FakeApiServer
from kubernetes import client
from prometheus_client import REGISTRY

from controlplane.sources.events import (
    KINDS,
    KindStale,
    KindSynced,
    ObjectChanged,
    SourceEvent,
)
from controlplane.sources.kube import KubeSource
from nodemesh.backoff import Backoff


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def api(apiserver: FakeApiServer) -> Iterator[client.ApiClient]:
    cfg = client.Configuration()
    cfg.host = apiserver.host
    with client.ApiClient(cfg) as api_client:
        yield api_client


def source(api: client.ApiClient, **kw: object) -> KubeSource:
    kw.setdefault("backoff", lambda: Backoff(first=0.05, cap=0.2))
    return KubeSource(api, **kw)  # type: ignore[arg-type]


async def until(it: AsyncIterator[SourceEvent], done, *, timeout: float = 5.0) -> list[SourceEvent]:
    """Read events until `done(events)` holds."""
    seen: list[SourceEvent] = []
    async with asyncio.timeout(timeout):
        while not done(seen):
            seen.append(await anext(it))
    return seen


def changes(events: list[SourceEvent]) -> list[tuple[str, str]]:
    return [
        (e.type.value, e.obj["metadata"]["name"]) for e in events if isinstance(e, ObjectChanged)
    ]


def synced(kinds: set[str]):
    return lambda seen: kinds <= {e.kind for e in seen if isinstance(e, KindSynced)}


async def test_lists_every_kind_then_watches_from_the_listed_version(apiserver, api) -> None:
    objs = k.web_app(replicas=2)
    for obj in objs:
        apiserver.apply(obj)
    listed_rv = str(apiserver.state.rv)
    it = source(api).events()
    try:
        first = await until(it, synced(set(KINDS)))
        assert sorted(changes(first)) == sorted(("ADDED", o["metadata"]["name"]) for o in objs)
        ns = next(e for e in first if isinstance(e, ObjectChanged) and e.kind == "Namespace")
        assert ns.obj["kind"] == "Namespace" and ns.obj["apiVersion"] == "v1"

        new_pod = k.pod("emojivoto", "late", node="node1", ip="10.244.1.50")
        apiserver.apply(new_pod)
        new_pod["status"]["phase"] = "Succeeded"
        apiserver.apply(new_pod)
        apiserver.delete("Pod", "emojivoto", "late")
        seen = await until(it, lambda s: len(s) == 3)
        assert changes(seen) == [("ADDED", "late"), ("MODIFIED", "late"), ("DELETED", "late")]
        assert seen[1].obj["status"]["phase"] == "Succeeded"
    finally:
        await it.aclose()
    watch = next(r for r in apiserver.requests if r.kind == "Pod" and r.watch)
    assert watch.params["resourceVersion"] == listed_rv
    assert watch.params["allowWatchBookmarks"] == "true"
    assert apiserver.open_watches == 0 or await _drained(apiserver)


async def _drained(apiserver: FakeApiServer) -> bool:
    for _ in range(50):
        if apiserver.open_watches == 0:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_410_gone_relists_and_reports_only_real_differences(apiserver, api) -> None:
    pods = [k.pod("ns", f"p{i}", node="node1", ip=f"10.244.1.{i + 1}") for i in range(3)]
    for p in pods:
        apiserver.apply(p)
    it = source(api, kinds=("Pod",)).events()
    try:
        await until(it, synced({"Pod"}))
        # History is compacted and, unseen by any watch, p0 goes away and p9 appears.
        apiserver.compact()
        with apiserver.cond:
            del apiserver.state.objects["Pod"][("ns", "p0")]
            apiserver.state.rv += 1
            extra = k.pod("ns", "p9", node="node1", ip="10.244.1.9")
            extra["metadata"]["resourceVersion"] = str(apiserver.state.rv)
            apiserver.state.objects["Pod"][("ns", "p9")] = extra
            apiserver.state.compacted = apiserver.state.rv
        apiserver.drop_watches()
        seen = await until(it, synced({"Pod"}))
        assert sorted(changes(seen)) == [("ADDED", "p9"), ("DELETED", "p0")]
        assert apiserver.count("Pod", watch=False) == 2
        # The new watch starts from the relisted version and still delivers changes.
        apiserver.apply(k.pod("ns", "p10", node="node1", ip="10.244.1.10"))
        assert changes(await until(it, lambda s: len(s) == 1)) == [("ADDED", "p10")]
    finally:
        await it.aclose()


async def test_dropped_connection_resumes_from_the_last_version_without_relisting(
    apiserver, api
) -> None:
    apiserver.apply(k.pod("ns", "a", node="node1", ip="10.244.1.1"))
    it = source(api, kinds=("Pod",)).events()
    try:
        await until(it, synced({"Pod"}))
        apiserver.bookmark()
        await asyncio.sleep(0.3)
        bookmarked = str(apiserver.state.rv)
        apiserver.drop_watches()
        apiserver.apply(k.pod("ns", "b", node="node1", ip="10.244.1.2"))  # while disconnected
        assert changes(await until(it, lambda s: len(s) == 1)) == [("ADDED", "b")]
        assert apiserver.count("Pod", watch=False) == 1
        watches = [r for r in apiserver.requests if r.kind == "Pod" and r.watch]
        assert len(watches) >= 2
        assert watches[1].params["resourceVersion"] == bookmarked
    finally:
        await it.aclose()


async def test_silent_stream_is_treated_as_dropped(apiserver, api) -> None:
    it = source(api, kinds=("Pod",), inactivity_timeout=0.3).events()
    try:
        await until(it, synced({"Pod"}))
        await asyncio.sleep(1.2)
        assert apiserver.count("Pod", watch=True) >= 3
        assert apiserver.count("Pod", watch=False) == 1
        apiserver.apply(k.pod("ns", "c", node="node1", ip="10.244.1.3"))
        assert changes(await until(it, lambda s: len(s) == 1)) == [("ADDED", "c")]
    finally:
        await it.aclose()


async def test_malformed_events_are_skipped_and_counted(apiserver, api) -> None:
    it_source = source(api, kinds=("Pod",))
    it = it_source.events()
    try:
        await until(it, synced({"Pod"}))
        apiserver.inject_line("Pod", "this is not json")
        apiserver.inject_line("Pod", '{"type": "ADDED", "object": {"metadata": {"name": "x"}}}')
        broken = k.pod("ns", "spec-is-a-list", node="node1", ip="10.244.1.4")
        broken["spec"] = ["nope"]
        apiserver.apply(broken)
        good = copy.deepcopy(k.pod("ns", "fine", node="node1", ip="10.244.1.5"))
        apiserver.apply(good)
        seen = await until(it, lambda s: len(s) == 1)
        assert changes(seen) == [("ADDED", "fine")]
        assert it_source.rejected == 3
    finally:
        await it.aclose()


async def test_unreachable_api_server_is_retried_with_backoff(apiserver) -> None:
    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # discard port: nothing listens
    cfg.retries = False
    before = _watch_errors()
    with client.ApiClient(cfg) as dead:
        it = source(dead, kinds=("Pod",)).events()
        try:
            with pytest.raises(TimeoutError):
                await until(it, lambda s: len(s) == 1, timeout=0.5)
        finally:
            await it.aclose()
    assert _watch_errors() - before >= 2  # it kept trying, and stopped cleanly when closed


def _watch_errors() -> float:
    return REGISTRY.get_sample_value("nodemesh_source_watch_errors_total", {"kind": "Pod"}) or 0.0


async def _seen_within(it: AsyncIterator[SourceEvent], name: str, *, timeout: float) -> float:
    """Seconds until a change of the pod `name` comes out of the source."""
    start = asyncio.get_running_loop().time()
    await until(it, lambda s: name in {n for _, n in changes(s)}, timeout=timeout)
    return asyncio.get_running_loop().time() - start


@pytest.mark.parametrize("outage", ["go_away", "refuse"])
async def test_changes_after_an_outage_are_seen_promptly(apiserver, api, outage) -> None:
    # A backoff that has grown to 16 s by the time the server is back (attempts ~1, 5, 21 s
    # into the outage): the server must be noticed when it answers, not when the delay ends.
    slow = lambda: Backoff(first=1.0, factor=4.0, cap=30.0)  # noqa: E731
    it = source(api, kinds=("Pod",), backoff=slow).events()
    try:
        await until(it, synced({"Pod"}))
        if outage == "go_away":
            apiserver.go_away()
        else:
            apiserver.refuse()
        await asyncio.sleep(7)
        if outage == "go_away":
            apiserver.come_back()
        else:
            apiserver.refuse(False)
        apiserver.apply(k.pod("ns", "after", node="node1", ip="10.244.1.7"))
        # A couple of seconds on an idle machine; generous for a loaded one, and still far
        # below the 9-23 s the grown backoff would take.
        took = await _seen_within(it, "after", timeout=30)
        assert took < 6, f"the change made right after the outage took {took:.1f}s to arrive"
    finally:
        await it.aclose()


async def test_a_watch_down_for_seconds_is_reported_not_synced_until_it_is_back(
    apiserver, api
) -> None:
    it = source(api, kinds=("Pod",), stale_after=1.0).events()
    try:
        await until(it, synced({"Pod"}))
        apiserver.go_away()
        down = await until(it, lambda s: any(isinstance(e, KindStale) for e in s), timeout=10)
        stale = next(e for e in down if isinstance(e, KindStale))
        assert stale.kind == "Pod" and stale.down_since <= time.time()
        apiserver.come_back()
        back = await until(it, synced({"Pod"}), timeout=10)
        assert not any(isinstance(e, KindStale) for e in back)
    finally:
        await it.aclose()


async def test_an_idle_watch_timing_out_is_not_a_warning(apiserver, api, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="controlplane.sources.kube")
    it = source(api, kinds=("Pod",), inactivity_timeout=0.3).events()
    try:
        await until(it, synced({"Pod"}))
        await asyncio.sleep(1.2)  # several inactivity timeouts on a quiet cluster
    finally:
        await it.aclose()
    assert apiserver.count("Pod", watch=True) >= 3
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noisy == []
    assert any("no event for" in r.getMessage() for r in caplog.records)
