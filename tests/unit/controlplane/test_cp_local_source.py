"""The local source follows a lab-like state directory and skips bad files with a reason."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import cp_objects as k
import pytest
import yaml

from controlplane.sources.events import KINDS, EventType, KindSynced, ObjectChanged, SourceEvent
from controlplane.sources.local import FULL_SCAN_EVERY, LocalSource
from nodemesh.lab.manifests import ref_of
from nodemesh.lab.store import Store


async def next_events(it: AsyncIterator[SourceEvent], n: int, timeout: float = 2.0) -> list:
    return [await asyncio.wait_for(anext(it), timeout) for _ in range(n)]


async def test_lists_then_follows_changes_within_a_second(tmp_path: Path) -> None:
    lab = k.LabDir(tmp_path)
    objs = k.web_app(replicas=2)
    for obj in objs:
        lab.put(obj)
    source = LocalSource(tmp_path, interval=0.1)
    it = source.events()
    try:
        first = await next_events(it, len(objs) + len(KINDS))
        added = [e for e in first if isinstance(e, ObjectChanged)]
        assert {e.type for e in added} == {EventType.ADDED}
        assert sorted(e.key for e in added) == sorted(
            (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objs
        )
        assert [e.kind for e in first if isinstance(e, KindSynced)] == list(KINDS)

        dep = objs[2]
        dep["spec"]["replicas"] = 3
        started = time.monotonic()
        lab.put(dep)
        (changed,) = await next_events(it, 1)
        assert time.monotonic() - started < 1.0
        assert changed.type is EventType.MODIFIED
        assert changed.obj["spec"]["replicas"] == 3

        # Same content rewritten with the same resourceVersion: nothing to report.
        path = lab.path("Deployment", "emojivoto", "web")
        path.write_text(path.read_text())
        lab.delete("Pod", "emojivoto", "web-5d8f7-1")
        (gone,) = await next_events(it, 1)
        assert gone.type is EventType.DELETED and gone.key == ("Pod", "emojivoto", "web-5d8f7-1")
    finally:
        await it.aclose()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("kind: Pod\nmetadata: {name: [unclosed\n", "cannot read YAML"),
        ("- just\n- a list\n", "expected a mapping, got list"),
        ("kind: Pod\nmetadata: {name: other, namespace: emojivoto}\n", "does not match the file"),
        ("kind: Service\nmetadata: {name: bad, namespace: emojivoto}\n", "kind 'Service' where"),
        ("kind: Pod\nmetadata: {name: bad}\n", "metadata.namespace missing"),
        ("kind: Pod\nmetadata: {name: bad, namespace: emojivoto}\nspec: 3\n", "spec is not a"),
    ],
)
def test_malformed_files_are_skipped_with_a_reason_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, reason: str
) -> None:
    lab = k.LabDir(tmp_path)
    lab.put(k.namespace("emojivoto"))
    lab.write_text("Pod", "emojivoto", "bad", text)
    source = LocalSource(tmp_path)
    with caplog.at_level(logging.WARNING):
        events = source.scan()
    assert [e.key for e in events] == [("Namespace", "", "emojivoto")]
    assert source.rejected == 1
    assert reason in caplog.text and "bad.yaml" in caplog.text
    # Reported once, not again on every poll; a fixed file is picked up.
    assert source.scan() == [] and source.rejected == 1
    lab.put(k.pod("emojivoto", "bad", node="node1", ip="10.244.1.9"))
    assert [(e.type, e.key) for e in source.scan()] == [
        (EventType.ADDED, ("Pod", "emojivoto", "bad"))
    ]


def test_missing_directory_is_empty_until_the_lab_creates_it(tmp_path: Path) -> None:
    source = LocalSource(tmp_path / "not-yet")
    assert source.scan() == []
    lab = k.LabDir(tmp_path / "not-yet")
    lab.put(k.node(1))
    assert [e.key for e in source.scan()] == [("Node", "", "node1")]


def test_a_file_rewritten_in_place_is_still_noticed(tmp_path: Path) -> None:
    lab = k.LabDir(tmp_path)
    obj = lab.put(k.node(1))
    source = LocalSource(tmp_path)
    assert len(source.scan()) == 1
    path = lab.path("Node", None, "node1")
    obj["metadata"]["resourceVersion"] = "9999"
    obj["spec"]["podCIDR"] = "10.244.9.0/24"
    with path.open("w") as f:  # not the lab's rename: the folder's mtime stays the same
        f.write(yaml.safe_dump(obj))
    seen = [e for _ in range(FULL_SCAN_EVERY) for e in source.scan()]
    assert [(e.type, e.obj["spec"]["podCIDR"]) for e in seen] == [
        (EventType.MODIFIED, "10.244.9.0/24")
    ]


def test_the_lab_stores_json_which_the_source_reads_as_the_objects(tmp_path: Path) -> None:
    # The lab writes each object as JSON (YAML that parses ~50x faster: the scale bench's pod
    # changes spent most of the source's time in YAML); what JSON cannot hold is YAML.
    store = Store(tmp_path / "objects")
    objs = [store.put(o) for o in k.web_app(replicas=2)]
    dated = k.namespace("dated")
    dated["metadata"]["annotations"] = {"note": "a\nb: {c}"}
    objs[0]["metadata"]["annotations"] = {"emoji": "\U0001f600 vote", "accent": "\u00e9"}
    objs[0] = store.put(objs[0])
    odd = k.namespace("odd")
    odd["metadata"]["annotations"] = {"nel": "x\x85y"}  # a line break to YAML, not to JSON
    objs.append(store.put(odd))
    dated["metadata"]["creationTimestamp"] = datetime.datetime(2026, 12, 2, 16, 0)
    objs.append(store.put(dated))
    for path in (tmp_path / "objects").rglob("*.yaml"):
        if path.stem not in ("dated", "odd"):
            json.loads(path.read_text())
        obj = yaml.safe_load(path.read_text())  # every file reads back as what was stored
        assert obj == store.get(ref_of(obj))
    found = {e.key: e.obj for e in LocalSource(tmp_path).scan()}
    assert found == {
        (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objs
    }
