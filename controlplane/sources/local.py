"""The `local` source: follows the lab's directory of YAML objects by polling file signatures."""

from __future__ import annotations

import asyncio
import logging
import os
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
# (inode, mtime, size): the lab replaces files by rename, so a new version has a new inode.
Signature = tuple[int, int, int]


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
        self._files: dict[Path, _Entry] = {}
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
        present: dict[Path, tuple[str, Signature]] = {}
        for kind in KINDS:
            for path in self._files_of(kind):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # replaced or removed between listing and stat
                present[path] = (kind, (st.st_ino, st.st_mtime_ns, st.st_size))
        events: list[ObjectChanged] = []
        for path, (kind, sig) in present.items():
            entry = self._files.get(path)
            if entry is not None and entry.signature == sig:
                continue
            event = self._read(path, kind, sig, entry)
            if event is not None:
                events.append(event)
        for path in [p for p in self._files if p not in present]:
            gone = self._files.pop(path)
            if gone.obj is not None:
                events.append(ObjectChanged(EventType.DELETED, _kind_of(self.root, path), gone.obj))
        for e in events:
            SOURCE_EVENTS.labels(self.name, e.kind, e.type.value).inc()
        return events

    def _files_of(self, kind: str) -> list[Path]:
        base = self.root / kind
        if kind in CLUSTER_SCOPED:
            dirs = [base]
        else:
            dirs = [Path(e.path) for e in _scandir(base) if e.is_dir() and e.name[0] != "."]
        return [
            Path(f.path)
            for d in dirs
            for f in _scandir(d)
            if f.name.endswith((".yaml", ".yml")) and not f.name.startswith(".") and f.is_file()
        ]

    def _read(
        self, path: Path, kind: str, sig: Signature, entry: _Entry | None
    ) -> ObjectChanged | None:
        previous = entry.obj if entry is not None else None
        try:
            obj = self._load(path, kind)
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
            obj = yaml.load(text, Loader=_Loader)
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


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _kind_of(root: Path, path: Path) -> str:
    return path.relative_to(root).parts[0]
