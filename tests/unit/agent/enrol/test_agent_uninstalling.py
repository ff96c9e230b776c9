"""The agent's side of an uninstall: install-cni's flag makes it take its rules out of every
running pod (rules before listeners), enrol nothing more, and clear its files; the record of
meshed namespaces it keeps for the plugin follows the control plane's table."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from agent_fakes import delta, pod_pb, snapshot
from nodemesh_cni.runfiles import raise_uninstall_flag, read_meshed
from test_agent_enrolment import Harness

from nodeagent.enrol.meshedrecord import MeshedRecord
from nodeagent.enrol.uninstalling import UninstallWatch
from nodemesh import tasks
from nodemesh.api import destination_pb2 as pb


def watch_for(h: Harness, run: Path, forgotten: list[bool] | None = None) -> UninstallWatch:
    return UninstallWatch(
        run,
        enroller=h.enroller,
        record=MeshedRecord(run, node="node1"),
        state_file=h.store.path,
        forget_serving=lambda: (forgotten if forgotten is not None else []).append(True),
    )


async def test_the_uninstall_flag_unmeshes_every_running_pod(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.feed(snapshot(pod_pb("web"), pod_pb("api", ip="10.0.0.3"), pod_pb("db", meshed=False)))
    for name in ("web", "api", "db"):
        assert (await h.enroller.add(h.request(name))).status == "ok"
    assert len(h.rules.installed) == 2
    open_at_removal: list[bool] = []
    remove = h.rules.remove

    async def remove_noting_listeners(netns: str) -> object:
        open_at_removal.append(h.open[netns].is_open())
        return await remove(netns)

    h.rules.remove = remove_noting_listeners  # type: ignore[method-assign]
    run = tmp_path / "run"
    run.mkdir()
    forgotten: list[bool] = []
    watch = watch_for(h, run, forgotten)
    watch.record.update(h.table)
    task = tasks.spawn(watch.run(), name="uninstall watch")
    try:
        await asyncio.sleep(0.3)
        assert h.rules.installed and not watch.done.is_set()  # no flag: nothing happens
        raise_uninstall_flag(run, reason="daemonset nodemesh/nodemesh-agent is gone")
        await asyncio.wait_for(watch.done.wait(), 5)
    finally:
        await tasks.cancel_all([task])
    assert h.rules.installed == {} and h.open == {}
    # Each pod's rules went before its listeners: never a redirect to a closed port.
    assert open_at_removal == [True, True]
    assert list(run.iterdir()) == []  # flag acknowledged, record removed
    assert not h.store.path.exists()
    assert forgotten == [True]  # the saved table, certificates and keys are removed too
    out = await h.enroller.add(h.request("late"))
    assert out.status == "retry" and "being uninstalled" in out.message
    assert len(h.rules.installed) == 0


async def test_a_flag_older_than_the_agent_is_ignored(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.feed(snapshot(pod_pb("web")))
    await h.enroller.add(h.request("web"))
    run = tmp_path / "run"
    run.mkdir()
    flag = raise_uninstall_flag(run, reason="left over by a killed install-cni")
    flag.write_text(json.dumps({"reason": "old", "time": time.time() - 3600}))
    watch = watch_for(h, run)
    assert not await watch.wait(0.5)
    assert h.rules.installed


async def test_sigterm_waits_for_the_flag_only_as_long_as_configured(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.feed(snapshot(pod_pb("web")))
    await h.enroller.add(h.request("web"))
    run = tmp_path / "run"
    run.mkdir()
    watch = watch_for(h, run)
    started = time.monotonic()
    assert not await watch.wait(0.4)  # a restart: rules stay for the next agent
    assert time.monotonic() - started >= 0.4 and h.rules.installed
    asyncio.get_running_loop().call_later(
        0.2, lambda: raise_uninstall_flag(run, reason="namespace nodemesh is being deleted")
    )
    assert await watch.wait(5)
    assert h.rules.installed == {}


async def test_the_record_of_meshed_namespaces_follows_the_table(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    record = MeshedRecord(tmp_path, node="node1")
    record.update(h.table)
    assert read_meshed(record.path) is None  # nothing known before the first snapshot
    endpoint = pb.Endpoint(ip="10.1.0.9", meshed=True, pod=pb.PodKey(namespace="pay", name="p"))
    service = pb.Service(key=pb.ServiceKey(namespace="pay", name="pay"), endpoints=[endpoint])
    h.feed(
        pb.Update(
            revision=1,
            snapshot=pb.Snapshot(
                pods=[pod_pb("web"), pod_pb("wiki", ns="docs", meshed=False)],
                services=[service],
                last=True,
            ),
        )
    )
    record.update(h.table)
    assert read_meshed(record.path) == {"shop", "pay"}
    h.feed(delta(pod_pb("web", meshed=False)))
    record.update(h.table)
    assert read_meshed(record.path) == {"pay"}
