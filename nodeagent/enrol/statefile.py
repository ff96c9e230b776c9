"""The agent's record of the pod attachments it knows, kept in a JSON file across restarts.

One record per CNI attachment (container id). A restarted agent reads it to find the pods whose
listeners it must reopen and whose rules it must re-check; the netns device and inode tell a
namespace that still exists from a new one that reuses the path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from nodeagent.rules import RedirectSettings
from nodemesh.model import PodKey

FORMAT_VERSION = 1


class StateFileError(ValueError):
    """The state file exists but cannot be read as nodemesh agent state."""


@dataclass(frozen=True)
class PodRecord:
    container_id: str
    ifname: str
    namespace: str
    name: str
    uid: str
    netns: str
    netns_dev: int
    netns_ino: int
    ip: str
    # Enrolled: rules and listeners are (meant to be) in place. False: known but not meshed.
    meshed: bool
    settings: RedirectSettings | None = None
    # "cni" for attachments the plugin announced; "adopted" for running pods found at start-up.
    origin: str = "cni"

    @property
    def key(self) -> PodKey:
        return PodKey(self.namespace, self.name)

    def with_settings(self, settings: RedirectSettings | None, *, meshed: bool) -> PodRecord:
        return replace(self, settings=settings, meshed=meshed)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["settings"] = self.settings.to_dict() if self.settings else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PodRecord:
        fields = dict(data)
        settings = fields.pop("settings", None)
        try:
            return cls(
                **fields, settings=RedirectSettings.from_dict(settings) if settings else None
            )
        except (TypeError, ValueError) as exc:
            raise StateFileError(f"bad pod record {data!r}: {exc}") from exc


def encode(records: Iterable[PodRecord]) -> str:
    pods = sorted((r.to_json() for r in records), key=lambda d: d["container_id"])
    return json.dumps({"version": FORMAT_VERSION, "pods": pods}, indent=1) + "\n"


def decode(text: str) -> list[PodRecord]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StateFileError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise StateFileError(f"unknown state format (want version {FORMAT_VERSION})")
    pods = data.get("pods")
    if not isinstance(pods, list) or not all(isinstance(p, dict) for p in pods):
        raise StateFileError("pods must be a list of objects")
    return [PodRecord.from_json(p) for p in pods]


class StateFile:
    """Load and save the records; saving writes a temp file and renames it over the old one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> list[PodRecord]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return decode(text)

    def save(self, records: Iterable[PodRecord]) -> None:
        # No fsync: the file lives on tmpfs (/var/run) and must not survive a reboot anyway; a
        # crashed agent's page cache is still the kernel's.
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(encode(records))
        os.replace(tmp, self.path)
