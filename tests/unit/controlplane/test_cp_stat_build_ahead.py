"""Stat answers built ahead (controlplane.stat_cache.warm, public_api.build_ahead): the first
Stat pod and Stat deployment over every namespace after a start find an answer, which is the
answer a build on demand gives for the same store and index (after pod churn too), is never
given once older than the kept answers' limit, and is rebuilt only as often as that limit needs,
only for as long as asked."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import grpc

from bench.controlplane_scale import build_report, peers, pod_obj
from controlplane import telemetry_child
from controlplane.public_api import DEFAULT_WINDOW, PublicService
from controlplane.sources.events import EventType, ObjectChanged
from controlplane.stat_cache import StatCache, _Held
from controlplane.telemetry_worker import TelemetryWorker, WorkerTelemetry
from nodemesh.api import public_pb2 as pb
from tests.unit.controlplane.test_cp_stat_answer import _api, _cluster
from tests.unit.controlplane.test_cp_stat_cache import Store


class Watched(StatCache[Any]):
    """A StatCache that tells when a build ends."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.built = asyncio.Condition()

    async def _run(self, key: Hashable, held: _Held[Any]) -> Any:
        answer = await super()._run(key, held)
        async with self.built:
            self.built.notify_all()
        return answer

    async def built_after(self, key: Hashable, since: float) -> None:
        """Until the kept answer to `key` is from a build begun at `since` or later."""
        async with self.built:
            await self.built.wait_for(
                lambda: key in self._held and self._held[key].started >= since
            )


class Admit:
    async def admit(self, *_: object) -> None:
        return None


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"{code}: {details}")

    def invocation_metadata(self) -> tuple[()]:
        return ()


def _all(kind: str) -> pb.StatRequest:
    return pb.StatRequest(resource=pb.Resource(kind=kind), all_namespaces=True)


def _key(api: PublicService, kind: str) -> tuple[object, ...]:
    return (id(api.telemetry), kind, "", "", None, None, DEFAULT_WINDOW)


async def test_the_first_stat_after_a_start_is_the_answer_built_ahead_and_a_fresh_one() -> None:
    plan, spots, raws = _cluster(10)
    worker = TelemetryWorker("inline", max_series=50_000, max_cells=500_000)
    await worker.start()
    store = telemetry_child.the_store()
    now = [store.clock()]
    store.clock = lambda: now[0]  # one instant for the kept answer and the fresh build
    for _ in range(3):
        await asyncio.gather(*(worker.report(r, None) for r in raws))
        now[0] += 1
    cache = Watched(refresh_s=0.05, max_age_s=0.5, keep_s=5)
    api = _api(plan, spots, WorkerTelemetry(worker))
    api.sends_encoded_stat = True
    api.gate = Admit()  # type: ignore[assignment]
    api.stat_cache = cache
    t0 = cache.clock()
    api.build_ahead(60)  # main: no such thing; the first call built its answer while it waited
    for kind in ("pod", "deployment"):
        await cache.built_after(_key(api, kind), t0)

    async def fresh(kind: str) -> bytes:
        raw = await api._stat(api.telemetry, kind, "", "", None, None, DEFAULT_WINDOW)
        assert isinstance(raw, bytes)
        return raw

    try:
        builds = cache.builds
        for kind in ("pod", "deploy"):
            raw = await api.Stat(_all(kind), Context())  # type: ignore[arg-type]
            assert isinstance(raw, bytes)
            # Found kept, not built for the call; the bytes a build on demand gives now.
            assert raw == await fresh("deployment" if kind == "deploy" else kind)
        assert cache.hits == 2 and cache.builds == builds
        rows = pb.StatResponse.FromString(await fresh("pod")).rows
        assert len(rows) == plan.pods and all(r.requests > 0 for r in rows)

        # Pod churn while nobody asks: one pod gone, one new pod with its own traffic.
        gone, moved = spots[0], spots[1]
        api.index.apply(
            ObjectChanged(EventType.DELETED, "Pod", pod_obj(gone.ns, gone.app, gone.name,
                                                            gone.node, gone.ip))
        )  # fmt: skip
        new = pod_obj(moved.ns, moved.app, "churn-0", moved.node, "10.99.0.2")
        api.index.apply(ObjectChanged(EventType.ADDED, "Pod", new))
        renamed = moved.__class__(**{**moved.__dict__, "name": "churn-0", "ip": "10.99.0.2"})
        mine = [s for s in spots if s.node == moved.node and s is not gone] + [renamed]
        now[0] += 1
        report = build_report(moved.node, mine, peers(plan, spots))
        await worker.report(report.SerializeToString(), None)
        assert "churn-0" in {p.key.name for p in api.index.pods_in_namespace(moved.ns)}
        # Asked by nobody, so kept built ahead: the next build holds the churn.
        t1 = cache.clock()
        await cache.built_after(_key(api, "pod"), t1)
        raw = await api.Stat(_all("pod"), Context())  # type: ignore[arg-type]
        assert raw == await fresh("pod")
        rows_of = {r.resource.name: r for r in pb.StatResponse.FromString(raw).rows}
        assert rows_of["churn-0"].total_pods == 1 and rows_of["churn-0"].requests > 0
        assert rows_of[gone.name].total_pods == 0  # its traffic is still in the window
        assert cache.hits == 3
    finally:
        cache.close()
        worker.close()


async def _ages(
    cache: StatCache[int], key: str, build: Callable[[], Awaitable[int]], seconds: float
) -> list[float]:
    """The age of the held answer every 20 ms for `seconds` (without asking it)."""
    ages = []
    for _ in range(int(seconds / 0.02)):
        await asyncio.sleep(0.02)
        held = cache._held.get(key)
        if held is not None and held.answer is not None:
            ages.append(cache.clock() - held.ready)
    return ages


async def test_an_answer_built_ahead_is_held_fresh_at_the_pace_its_age_limit_needs() -> None:
    """Built ahead, an answer is rebuilt just often enough to be held at most max_age_s old:
    every ~0.45 s here, not every refresh_s (0.05) as for a question being asked."""
    cache: StatCache[int] = StatCache(refresh_s=0.05, max_age_s=0.5, keep_s=0.2)
    store = Store()
    cache.warm("pods", store.build, 10)
    ages = sorted(await _ages(cache, "pods", store.build, 2.0))
    # Within max_age_s (a timer late on a loaded machine may stretch one gap a little).
    assert ages and ages[len(ages) * 9 // 10] <= 0.5 and ages[-1] < 0.75, ages[-5:]
    assert 3 <= store.builds <= 7, store.builds  # asked all along: ~40
    cache.close()


async def test_an_answer_built_ahead_is_not_given_once_too_old() -> None:
    cache: StatCache[int] = StatCache(refresh_s=0.05, max_age_s=0.3, keep_s=5)
    store = Store()
    store.requests = 1
    cache.warm("pods", store.build, 10)
    await _ages(cache, "pods", store.build, 0.1)
    store.gate.clear()  # the store stops answering: the held answer ages
    await asyncio.sleep(0.5)
    late = asyncio.ensure_future(cache.get("pods", store.build))
    await asyncio.sleep(0.05)
    assert not late.done()  # waits for a build, as for any kept answer
    store.requests = 2
    store.gate.set()
    assert await late == 2
    cache.close()


async def test_building_ahead_ends_when_its_time_is_up_or_once_asked() -> None:
    cache: StatCache[int] = StatCache(refresh_s=0.05, max_age_s=0.2, keep_s=0.3)
    unasked, asked = Store(), Store()
    cache.warm("unasked", unasked.build, 0.5)
    cache.warm("asked", asked.build, 60)
    await _ages(cache, "asked", asked.build, 0.1)
    assert await cache.get("asked", asked.build) == 0  # found built ahead
    await asyncio.sleep(1.2)
    # Both forgotten: the first after its 0.5 s, the second keep_s after its one call (as a
    # question asked; not the 60 s it was built ahead for).
    assert "unasked" not in cache._held and "asked" not in cache._held
    settled = (unasked.builds, asked.builds)
    await asyncio.sleep(0.5)
    assert (unasked.builds, asked.builds) == settled
    cache.close()


async def test_a_failed_build_ahead_is_not_kept() -> None:
    cache: StatCache[int] = StatCache(refresh_s=0.05, max_age_s=0.2, keep_s=0.3)
    store = Store()
    store.fail = ValueError("no store")
    cache.warm("pods", store.build, 60)
    await asyncio.sleep(0.05)
    assert "pods" not in cache._held and store.builds == 1
    cache.close()


def test_a_replica_gone_builds_ahead_on_the_others() -> None:
    """With replicas (--ha), the callers of a replica that goes reach the others, which were
    never asked their questions: a peer leaving the index (or changing IP) builds ahead there,
    as a start does; a peer coming does not."""
    import cp_objects as k

    from controlplane.index import ClusterIndex
    from controlplane.peers import PEER_LABEL, PeersLeft, find_peers

    index = ClusterIndex()
    label = {PEER_LABEL[0]: PEER_LABEL[1]}

    def replica(name: str, ip: str) -> dict[str, Any]:
        return k.pod("nodemesh", name, node="node1", ip=ip, labels=label)

    calls: list[int] = []
    watch = PeersLeft(
        lambda: find_peers(index, namespace="nodemesh", me="cp-a"), then=lambda: calls.append(1)
    )

    def apply(kind: EventType, obj: dict[str, Any]) -> None:
        watch(index.apply(ObjectChanged(kind, "Pod", obj)), 0)

    for name, ip in (("cp-a", "10.0.0.1"), ("cp-b", "10.0.0.2"), ("cp-c", "10.0.0.3")):
        apply(EventType.ADDED, replica(name, ip))
    assert calls == []
    apply(EventType.DELETED, replica("cp-b", "10.0.0.2"))
    assert calls == [1]
    apply(EventType.MODIFIED, replica("cp-c", "10.0.0.9"))  # restarted elsewhere
    assert calls == [1, 1]
    apply(EventType.ADDED, replica("cp-b", "10.0.0.4"))
    apply(EventType.DELETED, replica("cp-a", "10.0.0.1"))  # itself: not a peer
    assert calls == [1, 1]
