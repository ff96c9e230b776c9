"""The `local` source: follows the lab's directory of YAML objects by polling file signatures."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from controlplane.metrics import SOURCE_EVENTS, SOURCE_REJECTED
from controlplane.sources.events import (
    CLUSTER_SCOPED,
    KINDS,
    BadObject,
    EventType,
    KindSynced,
    Obj,
    ObjectChanged,
    SourceEvent,
    check_object,
    resource_version,
)

log = logging.getLogger(__name__)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
FULL_SCAN_EVERY = 25  # polls; catches files rewritten in place, which leave the folder alone
# A folder's listing stands while its mtime does, if made this long after that mtime: more than
# a timestamp tick of Linux's local filesystems (tmpfs, ext4, xfs: 1-10 ms).
SETTLE_NS = 100_000_000
# (inode, mtime, size): the lab replaces files by rename, so a new version has a new inode.
Signature = tuple[int, int, int]
# Keyed by path strings: Path objects as keys (hashing, comparing, parsing) were most of a
# poll's cost with 14,000 files.
Listing = dict[str, tuple[str, Signature]]


@dataclass(slots=True)
class _Entry:
    signature: Signature
    obj: Obj | None  # None while the file is malformed and nothing good was seen before


class LocalSource:
    """Emits every object under `<state_dir>/objects/` once, then whatever changes, each poll."""

    name = "local"

    def __init__(self, state_dir: Path | str, *, interval: float = 0.2) -> None:
        state_dir = Path(state_dir)
        self.root = state_dir if state_dir.name == "objects" else state_dir / "objects"
        self.interval = interval
        self.rejected = 0
        self._files: dict[str, _Entry] = {}
        # folder -> (its mtime, when it was listed, the listing)
        self._folders: dict[Path, tuple[int, int, Listing]] = {}
        self._polls = 0
        self._missing_logged = False

    async def events(self) -> AsyncIterator[SourceEvent]:
        first = await asyncio.to_thread(self.scan)
        for event in first:
            yield event
        for kind in KINDS:
            yield KindSynced(kind)
        while True:
            await asyncio.sleep(self.interval)
            for event in await asyncio.to_thread(self.scan):
                yield event

    def scan(self) -> list[ObjectChanged]:
        """One pass over the directory; returns the changes since the previous pass."""
        if not self.root.is_dir() and not self._missing_logged:
            log.warning("state directory %s does not exist (yet); treating it as empty", self.root)
            self._missing_logged = True
        self._polls += 1
        turn = self._polls % FULL_SCAN_EVERY
        events: list[ObjectChanged] = []
        listed: set[Path] = set()
        for kind in KINDS:
            for folder in self._folders_of(kind):
                # Each folder's files are all stat-ed every FULL_SCAN_EVERY polls, a share of
                # the folders on each poll (all at once held the lock for 0.2-0.3 s at 14,000
                # files, every 5 s).
                full = len(listed) % FULL_SCAN_EVERY == turn
                listed.add(folder)
                cached = self._folders.get(folder)
                before = cached[2] if cached is not None else {}
                now = self._files_in(folder, kind, full=full)
                if now is before:
                    continue  # the folder's listing stands: so do its files (no compare)
                self._compare(before, now, events)
        for folder in [f for f in self._folders if f not in listed]:
            self._compare(self._folders.pop(folder)[2], {}, events)  # a namespace's folder went
        for e in events:
            SOURCE_EVENTS.labels(self.name, e.kind, e.type.value).inc()
        return events

    def _compare(self, before: Listing, now: Listing, events: list[ObjectChanged]) -> None:
        """The events of one folder whose listing was read again: files new or replaced since
        `before`, and those gone from it. Only such folders are compared: with 14,000 files,
        comparing every file on each poll (5 a second) held the interpreter lock ~15-20 ms a
        poll with nothing changed, time the event loop serving the agents waited for."""
        for path, (kind, sig) in now.items():
            entry = self._files.get(path)
            if entry is not None and entry.signature == sig:
                continue
            event = self._read(path, kind, sig, entry)
            if event is not None:
                events.append(event)
        for path in before:
            if path in now:
                continue
            gone = self._files.pop(path, None)
            if gone is not None and gone.obj is not None:
                events.append(ObjectChanged(EventType.DELETED, _kind_of(self.root, path), gone.obj))

    def _folders_of(self, kind: str) -> list[Path]:
        base = self.root / kind
        if kind in CLUSTER_SCOPED:
            return [base]
        return [Path(e.path) for e in _scandir(base) if e.is_dir() and e.name[0] != "."]

    def _files_in(self, folder: Path, kind: str, *, full: bool) -> Listing:
        """Signatures of the YAML files in `folder`, re-read only when the folder changed.

        The lab writes by rename, which bumps the folder's mtime, so an unchanged folder holds
        unchanged files. Timestamps are coarse (a clock tick: a later rename in the same tick
        leaves the mtime as it was), so a listing stands only if it was made SETTLE_NS after the
        mtime it saw; and every folder is read on each FULL_SCAN_EVERY-th poll (a filesystem
        with coarser timestamps than SETTLE_NS shows a change by then at the latest). Until a
        folder is listed SETTLE_NS after its last change, it is listed on every poll: with 1 s
        there (as before), a folder of the scale bench's churn was listed on each poll for good,
        500 files each time."""
        try:
            st = folder.stat()
        except FileNotFoundError:
            return {}
        cached = self._folders.get(folder)
        if (
            cached is not None
            and cached[0] == st.st_mtime_ns
            and cached[1] - st.st_mtime_ns > SETTLE_NS
            and not full
        ):
            return cached[2]
        listed_at = time.time_ns()
        found: Listing = {}
        before = cached[2] if cached is not None else {}
        for f in _scandir(folder):
            if not f.name.endswith((".yaml", ".yml")) or f.name.startswith("."):
                continue
            path = f.path
            # A file whose inode (free from the directory listing) is unchanged was not
            # replaced: its signature stands without a stat, except on a full pass, which
            # catches files rewritten in place. (With 500 pods a folder, stat-ing every file of
            # each folder touched in the last second made one poll take 0.2-0.6 s at 10,000 pods.)
            known = before.get(path)
            if not full and known is not None and known[1][0] == f.inode():
                found[path] = known
                continue
            try:
                fst = f.stat()
            except FileNotFoundError:
                continue  # replaced or removed between listing and stat
            if stat.S_ISREG(fst.st_mode):
                found[path] = (kind, (fst.st_ino, fst.st_mtime_ns, fst.st_size))
        self._folders[folder] = (st.st_mtime_ns, listed_at, found)
        return found

    def _read(
        self, path: str, kind: str, sig: Signature, entry: _Entry | None
    ) -> ObjectChanged | None:
        previous = entry.obj if entry is not None else None
        try:
            obj = self._load(Path(path), kind)
        except BadObject as exc:
            self.rejected += 1
            SOURCE_REJECTED.labels(self.name, kind).inc()
            log.warning("skipping %s: %s", path, exc)
            # Remember the signature so one bad file is reported once, not on every poll.
            self._files[path] = _Entry(sig, previous)
            return None
        self._files[path] = _Entry(sig, obj)
        if previous is None:
            return ObjectChanged(EventType.ADDED, kind, obj)
        if resource_version(previous) == resource_version(obj):
            return None
        return ObjectChanged(EventType.MODIFIED, kind, obj)

    def _load(self, path: Path, kind: str) -> Obj:
        try:
            text = path.read_text(encoding="utf-8")
            obj = _parse(text)
        except FileNotFoundError as exc:
            raise BadObject("removed while being read") from exc
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise BadObject(f"cannot read YAML: {exc}".splitlines()[0]) from exc
        obj = check_object(kind, obj)
        meta = obj["metadata"]
        if meta["name"] != path.stem:
            raise BadObject(f"metadata.name {meta['name']!r} does not match the file name")
        if kind not in CLUSTER_SCOPED and meta["namespace"] != path.parent.name:
            raise BadObject(f"metadata.namespace {meta['namespace']!r} does not match the folder")
        obj.setdefault("kind", kind)
        return obj


def _parse(text: str) -> object:
    """A file's object. The lab writes JSON (nodemesh.lab.store), which is YAML that json
    parses ~50x faster (a 12-endpoint EndpointSlice: 0.03 ms against 1.2-2.3 ms); anything
    else, including a flow mapping that is not JSON, is read as YAML."""
    if text[:1] == "{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return yaml.load(text, Loader=_Loader)


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _kind_of(root: Path, path: str) -> str:
    return Path(path).relative_to(root).parts[0]
