"""The event model every source emits, and the bookkeeping that turns a listing into events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

# Kinds the index consumes, in an order that lets it resolve owners before the objects they own.
KINDS: tuple[str, ...] = (
    "Namespace",
    "Node",
    "Deployment",
    "ReplicaSet",
    "Pod",
    "Service",
    "EndpointSlice",
    "InboundPolicy",  # policy.nodemesh.io (nodemesh/authz.py)
    "HTTPRoute",
    "GRPCRoute",
)
CLUSTER_SCOPED = frozenset({"Namespace", "Node"})

Obj = dict[str, Any]


class EventType(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class ObjectChanged:
    type: EventType
    kind: str
    obj: Obj

    @property
    def key(self) -> tuple[str, str, str]:
        return object_key(self.kind, self.obj)


@dataclass(frozen=True, slots=True)
class KindSynced:
    """Every object of `kind` that existed when the source (re)listed has been emitted."""

    kind: str


@dataclass(frozen=True, slots=True)
class KindStale:
    """The source has not been able to follow `kind` since `down_since` (Unix time): what the
    index holds of it may be out of date until the next KindSynced."""

    kind: str
    down_since: float


SourceEvent = ObjectChanged | KindSynced | KindStale


class Source(Protocol):
    name: str

    def events(self) -> AsyncIterator[SourceEvent]: ...


class BadObject(ValueError):
    """An object a source cannot pass on; the message is the reason that gets logged."""


def object_key(kind: str, obj: Obj) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return (kind, meta.get("namespace") or "", meta.get("name") or "")


def resource_version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def check_object(kind: str, obj: object) -> Obj:
    """Return `obj` if it has the shape the index relies on, else raise BadObject saying why."""
    if not isinstance(obj, dict):
        raise BadObject(f"expected a mapping, got {type(obj).__name__}")
    if obj.get("kind", kind) != kind:
        raise BadObject(f"kind {obj.get('kind')!r} where {kind!r} was expected")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise BadObject("metadata missing or not a mapping")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise BadObject("metadata.name missing")
    namespace = meta.get("namespace")
    if kind in CLUSTER_SCOPED:
        if namespace:
            raise BadObject(f"{kind} is cluster-scoped but has namespace {namespace!r}")
    elif not isinstance(namespace, str) or not namespace:
        raise BadObject("metadata.namespace missing")
    for section in ("spec", "status"):
        if section in obj and obj[section] is not None and not isinstance(obj[section], dict):
            raise BadObject(f"{section} is not a mapping")
    for m in ("labels", "annotations"):
        if meta.get(m) is not None and not isinstance(meta[m], dict):
            raise BadObject(f"metadata.{m} is not a mapping")
    return obj


class Inventory:
    """What one kind looked like at the last listing, so a relist yields only real differences."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._known: dict[tuple[str, str, str], Obj] = {}

    def __len__(self) -> int:
        return len(self._known)

    def record(self, event: ObjectChanged) -> None:
        if event.type is EventType.DELETED:
            self._known.pop(event.key, None)
        else:
            self._known[event.key] = event.obj

    def replace(self, objs: Iterable[Obj]) -> list[ObjectChanged]:
        """Diff a complete listing against what is known (MODIFIED means a new resourceVersion)."""
        seen: dict[tuple[str, str, str], Obj] = {}
        events: list[ObjectChanged] = []
        for obj in objs:
            key = object_key(self.kind, obj)
            seen[key] = obj
            old = self._known.get(key)
            if old is None:
                events.append(ObjectChanged(EventType.ADDED, self.kind, obj))
            elif resource_version(old) != resource_version(obj):
                events.append(ObjectChanged(EventType.MODIFIED, self.kind, obj))
        for key, old in self._known.items():
            if key not in seen:
                events.append(ObjectChanged(EventType.DELETED, self.kind, old))
        self._known = seen
        return events
