"""The enrolment state machine with fake rules and listeners: what ADD, DEL, CHECK, GC, table
changes, restore and adoption do, and what they undo when something fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from agent_fakes import (
    FakeListeners,
    FakeRules,
    MemoryStore,
    delta,
    fake_netns,
    pod_pb,
    snapshot,
)

from nodeagent.enrol.enrolment import AddRequest, Enroller
from nodeagent.enrol.phases import Event, InvalidTransition, Phase, next_phase
from nodeagent.enrol.statefile import PodRecord
from nodeagent.rules import build_pod_plan
from nodeagent.upstream.table import DestinationTable
from nodemesh.model import PodKey

MARK = 0x6E6D


class Harness:
    def __init__(self, tmp: Path, *, pod_wait: float = 0.3) -> None:
        self.tmp = tmp
        self.table = DestinationTable("node1")
        self.rules = FakeRules()
        self.open: dict[str, FakeListeners] = {}
        self.store = MemoryStore(tmp / "state.json")
        self.found: dict[str, tuple[str, object]] = {}
        self.enroller = Enroller(
            table=self.table,
            rules=self.rules,
            listeners=lambda pod: FakeListeners(pod, self.open),
            store=self.store,
            find_netns=lambda ips, skip: {ip: self.found[ip] for ip in ips if ip in self.found},
            mark=MARK,
            pod_wait=pod_wait,
        )

    def feed(self, update) -> set[str]:
        change = self.table.apply(update)
        assert change is not None
        return self.enroller.table_changed(change)

    def request(self, name: str, *, ns: str = "shop", cid: str | None = None) -> AddRequest:
        path = self.tmp / f"netns-{name}"
        if not path.exists():
            fake_netns(self.tmp, f"netns-{name}")
        return AddRequest(
            container_id=cid or f"ctr-{name}",
            ifname="eth0",
            netns=str(path),
            namespace=ns,
            name=name,
            uid=f"uid-{name}",
            ips=("10.0.0.2",),
        )


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


async def test_add_meshed_pod_installs_rules_opens_listeners_and_records_it(h: Harness) -> None:
    h.feed(snapshot(pod_pb("web", skip_in=(9000, 9000))))
    req = h.request("web")
    out = await h.enroller.add(req)
    assert (out.status, out.meshed) == ("ok", True)
    plan = h.rules.installed[req.netns]
    assert "9000" in " ".join(str(r) for r in plan.rules())
    assert h.open[req.netns].is_open()
    [rec] = h.store.load()
    assert (rec.key, rec.container_id, rec.meshed) == (PodKey("shop", "web"), "ctr-web", True)
    assert rec.settings is not None and rec.settings.skip_inbound_ports == ((9000, 9000),)
    assert (await h.enroller.check("ctr-web", "shop", "web")).status == "ok"


async def test_add_twice_is_idempotent(h: Harness) -> None:
    h.feed(snapshot(pod_pb("web")))
    req = h.request("web")
    await h.enroller.add(req)
    out = await h.enroller.add(req)
    assert (out.status, out.meshed) == ("ok", True)
    assert len(h.open) == 1 and len(h.store.load()) == 1


async def test_pod_not_meshed_is_passed_through_untouched(h: Harness) -> None:
    h.feed(snapshot(pod_pb("web", meshed=False), pod_pb("host", host_network=True)))
    for name in ("web", "host"):
        out = await h.enroller.add(h.request(name))
        assert (out.status, out.meshed) == ("ok", False)
    assert h.rules.calls == [] and h.open == {}
    assert "hostNetwork" in (await h.enroller.add(h.request("host"))).message


async def test_unknown_pod_waits_then_asks_for_a_retry(h: Harness) -> None:
    h.feed(snapshot())
    out = await h.enroller.add(h.request("late"))
    assert out.status == "retry" and "not yet known" in out.message
    assert h.rules.calls == []


async def test_add_waits_for_a_pod_that_arrives_meanwhile(tmp_path: Path) -> None:
    h = Harness(tmp_path, pod_wait=3.0)
    h.feed(snapshot())
    task = asyncio.ensure_future(h.enroller.add(h.request("web")))
    await asyncio.sleep(0.05)
    h.feed(delta(pod_pb("web")))
    out = await asyncio.wait_for(task, 2)
    assert (out.status, out.meshed) == ("ok", True)


async def test_add_before_any_table_is_retry(h: Harness) -> None:
    out = await h.enroller.add(h.request("web"))
    assert out.status == "retry" and "control plane" in out.message
    assert h.enroller.status().status == "retry"


async def test_rule_failure_closes_listeners_and_forgets(h: Harness) -> None:
    h.feed(snapshot(pod_pb("web")))
    req = h.request("web")
    h.rules.fail_apply.add(req.netns)
    out = await h.enroller.add(req)
    assert out.status == "error" and "iptables said no" in out.message
    assert h.open == {}
    assert ("remove", req.netns) in h.rules.calls
    assert h.store.load() == [] and h.enroller.phases == {}


async def test_listener_failure_installs_no_rules(h: Harness) -> None:
    h.feed(snapshot(pod_pb("web")))
    req = h.request("web")
    FakeListeners.fail_open = {req.netns}
    try:
        out = await h.enroller.add(req)
    finally:
        FakeListeners.fail_open = set()
    assert out.status == "error" and "Address already in use" in out.message
    assert req.netns not in h.rules.installed


async def test_del_removes_and_is_idempotent(h: Harness) -> None:
    h.feed(snapshot(pod_pb("web")))
    req = h.request("web")
    await h.enroller.add(req)
    assert (await h.enroller.delete("ctr-web", req.netns)).status == "ok"
    assert h.rules.installed == {} and h.open == {} and h.store.load() == []
    assert (await h.enroller.delete("ctr-web", req.netns)).status == "ok"
    assert (await h.enroller.delete("never-seen", "")).status == "ok"


async def test_del_of_a_vanished_netns_forgets_without_touching_rules(h: Harness) -> None:
    h.feed(snapshot(pod_pb("web")))
    req = h.request("web")
    await h.enroller.add(req)
    Path(req.netns).unlink()
    h.rules.calls.clear()
    assert (await h.enroller.delete("ctr-web", "")).status == "ok"
    assert h.rules.calls == [] and h.open == {}


async def test_check_reports_missing_rules(h: Harness) -> None:
    h.feed(snapshot(pod_pb("web"), pod_pb("other")))
    req = h.request("web")
    await h.enroller.add(req)
    del h.rules.installed[req.netns]
    out = await h.enroller.check("ctr-web", "shop", "web")
    assert out.status == "error" and "missing" in out.message
    out = await h.enroller.check("ctr-other", "shop", "other")
    assert out.status == "error" and "not enrolled" in out.message


async def test_gc_forgets_attachments_the_runtime_no_longer_has(h: Harness) -> None:
    h.feed(snapshot(pod_pb("a"), pod_pb("b")))
    await h.enroller.add(h.request("a"))
    await h.enroller.add(h.request("b"))
    await h.enroller.gc({"ctr-a"})
    assert [r.name for r in h.store.load()] == ["a"]
    assert len(h.open) == 1


async def test_unmeshing_and_remeshing_follow_the_table(h: Harness) -> None:
    h.feed(snapshot(pod_pb("web")))
    req = h.request("web")
    await h.enroller.add(req)
    dirty = h.feed(delta(pod_pb("web", meshed=False)))
    assert dirty == {"ctr-web"}
    await h.enroller.reconcile("ctr-web")
    assert h.rules.installed == {} and h.open == {}
    assert h.enroller.phases["ctr-web"] is Phase.PASSIVE
    [rec] = h.store.load()
    assert not rec.meshed
    h.feed(delta(pod_pb("web", meshed=True), revision=3))
    await h.enroller.reconcile("ctr-web")
    assert req.netns in h.rules.installed and h.open[req.netns].is_open()


async def test_changed_annotations_replan_an_enrolled_pod(h: Harness) -> None:
    h.feed(snapshot(pod_pb("web")))
    req = h.request("web")
    await h.enroller.add(req)
    h.feed(delta(pod_pb("web", skip_in=(8000, 8010))))
    await h.enroller.reconcile("ctr-web")
    [rec] = h.store.load()
    assert rec.settings is not None and rec.settings.skip_inbound_ports == ((8000, 8010),)
    assert h.rules.installed[req.netns] == build_pod_plan(rec.settings)


async def test_restore_reopens_listeners_repairs_rules_and_forgets_vanished(h: Harness) -> None:
    h.feed(snapshot(pod_pb("a"), pod_pb("b")))
    req_a, req_b = h.request("a"), h.request("b")
    await h.enroller.add(req_a)
    await h.enroller.add(req_b)
    Path(req_b.netns).unlink()
    # A new agent: same state file, no listeners, a's rules lost meanwhile.
    again = Harness(h.tmp)
    await again.enroller.restore()
    assert set(again.open) == {req_a.netns}
    assert req_a.netns in again.rules.installed
    assert [r.name for r in again.store.load()] == ["a"]
    assert again.enroller.status().status == "retry"  # no table yet


async def test_restore_ignores_a_netns_path_reused_by_another_namespace(h: Harness) -> None:
    h.feed(snapshot(pod_pb("a")))
    req = h.request("a")
    await h.enroller.add(req)
    # Made while the old one exists, so it cannot get the same inode back.
    newer = Path(req.netns + ".new")
    newer.write_text("another namespace")
    newer.replace(req.netns)
    again = Harness(h.tmp)
    await again.enroller.restore()
    assert again.open == {} and again.rules.calls == []


async def test_adoption_enrols_running_pods_and_add_takes_them_over(h: Harness) -> None:
    path, ident = fake_netns(h.tmp, "netns-web")
    h.found["10.0.0.2"] = (path, ident)
    h.feed(snapshot(pod_pb("web"), pod_pb("off", meshed=False, ip="10.0.0.3")))
    assert await h.enroller.adopt() == 1
    assert set(h.open) == {path}
    [rec] = h.store.load()
    assert rec.origin == "adopted"
    # The runtime's later ADD for the same netns takes the record over instead of doubling it.
    out = await h.enroller.add(h.request("web"))
    assert out.status == "ok" and out.message == "already enrolled"
    [rec] = h.store.load()
    assert (rec.container_id, rec.origin) == ("ctr-web", "cni")
    assert await h.enroller.adopt() == 0


async def test_sweep_forgets_pods_whose_netns_vanished(h: Harness) -> None:
    h.feed(snapshot(pod_pb("web")))
    req = h.request("web")
    await h.enroller.add(req)
    Path(req.netns).unlink()
    await h.enroller.sweep()
    assert h.open == {} and h.store.load() == [] and h.enroller.enrolled() == []


def test_transition_table_refuses_what_it_does_not_list() -> None:
    assert next_phase(Phase.ABSENT, Event.ADD_MESHED) is Phase.ENROLLING
    assert next_phase(Phase.ENROLLED, Event.UNMESH) is Phase.REMOVING
    with pytest.raises(InvalidTransition):
        next_phase(Phase.ABSENT, Event.INSTALLED)
    with pytest.raises(InvalidTransition):
        next_phase(Phase.ENROLLING, Event.DELETE)


def test_state_records_survive_a_round_trip(tmp_path: Path) -> None:
    from nodeagent.enrol.statefile import StateFile, StateFileError
    from nodeagent.rules import RedirectSettings

    rec = PodRecord(
        container_id="c1",
        ifname="eth0",
        namespace="shop",
        name="web",
        uid="u",
        netns="/run/netns/x",
        netns_dev=4,
        netns_ino=4026532000,
        ip="10.0.0.2",
        meshed=True,
        settings=RedirectSettings(skip_outbound_ports=((5432, 5432),)),
    )
    store = StateFile(tmp_path / "sub" / "state.json")
    assert store.load() == []
    store.save([rec])
    assert store.load() == [rec]
    assert oct(store.path.stat().st_mode & 0o777) == "0o600"
    store.path.write_text('{"version": 99}')
    with pytest.raises(StateFileError):
        store.load()


WEB_ID = "spiffe://cluster.local/ns/shop/sa/web"


async def test_add_is_answered_once_the_pods_certificate_is_held(h: Harness) -> None:
    """The pod's containers start when ADD is answered: its certificate first, so its first
    connections are not held waiting for one; without it after the wait, ADD still succeeds."""
    asked: list[str] = []
    arrived = asyncio.Event()

    async def ready(identity: str) -> bool:
        asked.append(identity)
        await arrived.wait()
        return identity == WEB_ID

    h.enroller.identity_ready = ready
    web, plain = pod_pb("web"), pod_pb("plain", meshed=False, ip="10.0.0.3")
    web.identity = WEB_ID
    h.feed(snapshot(web, plain))
    add = asyncio.ensure_future(h.enroller.add(h.request("web")))
    await asyncio.sleep(0.05)
    assert not add.done() and asked == [WEB_ID]
    assert h.rules.installed  # the rules are in before the wait
    arrived.set()
    assert ((await add).status, (await add).meshed) == ("ok", True)
    assert (await h.enroller.add(h.request("plain"))).status == "ok"
    assert asked == [WEB_ID]  # a pod outside the mesh waits for nothing

    other = pod_pb("api", ip="10.0.0.4")
    other.identity = "spiffe://cluster.local/ns/shop/sa/api"  # never certified
    h.feed(delta(other))
    out = await asyncio.wait_for(h.enroller.add(h.request("api")), 5)
    assert (out.status, out.meshed) == ("ok", True)
