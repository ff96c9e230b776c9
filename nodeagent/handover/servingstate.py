"""What the agent keeps on the node to serve across its own restart: the last destination table
and its pods' certificates with their keys.

A restarted agent that cannot reach the control plane would otherwise know no destination and
hold no certificate, and its pods' meshed traffic could only be refused. The file is the agent's
alone: mode 0600 in a 0700 directory on the node's tmpfs (gone at reboot, like the keys' pods),
written to a temp file and renamed. It is refused, with one log line saying why, when it is not
ours (owner, mode, node, format) or cannot be read; the agent then starts as if it had none.
Certificates that expired while the agent was away are not loaded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from nodeagent.upstream.certstore import CertStore
from nodeagent.upstream.table import DestinationTable, TableChanged
from nodemesh import certs
from nodemesh.api import destination_pb2 as pb

log = logging.getLogger(__name__)

FORMAT = "nodemesh-agent-serving-state"
VERSION = 1
# How often a change is looked for; what changed in the last interval is lost to a kill -9.
SAVE_INTERVAL = 1.0


class ServingStateError(ValueError):
    """The file exists but is not this agent's serving state; the message says why."""


@dataclass(frozen=True)
class Saved:
    node: str
    saved_at: float
    revision: int
    table: pb.Snapshot
    certificates: tuple[certs.CertifiedKey, ...]
    # Identities whose saved certificate had expired (not loaded).
    expired: tuple[str, ...] = ()


def encode(
    *,
    node: str,
    revision: int,
    table: pb.Snapshot,
    certificates: list[certs.CertifiedKey],
    now: float,
) -> bytes:
    entries = [
        {
            "identity": c.identity,
            "chain_pem": c.chain_pem().decode(),
            "key_pem": c.key_pem.decode(),
        }
        for c in sorted(certificates, key=lambda c: c.identity)
    ]
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "node": node,
        "saved_at": now,
        "revision": revision,
        "table": base64.b64encode(table.SerializeToString()).decode(),
        "certificates": entries,
    }
    return json.dumps(doc, indent=1).encode() + b"\n"


def _field(doc: dict[str, Any], name: str, *kinds: type) -> Any:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ServingStateError(f"field {name!r} is missing or not {kinds[0].__name__}")
    return value


def decode(data: bytes, *, node: str, now: float) -> Saved:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ServingStateError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ServingStateError(f"not a {FORMAT} file")
    if doc.get("version") != VERSION:
        got = doc.get("version")
        raise ServingStateError(f"format version {got!r}; this agent reads version {VERSION}")
    owner = _field(doc, "node", str)
    if owner != node:
        raise ServingStateError(f"written by the agent of node {owner!r}, this is {node!r}")
    saved_at = float(_field(doc, "saved_at", float, int))
    revision = _field(doc, "revision", int)
    try:
        table = pb.Snapshot.FromString(base64.b64decode(_field(doc, "table", str), validate=True))
    except (binascii.Error, DecodeError) as exc:
        raise ServingStateError(f"table: {exc}") from exc
    if not table.last:
        raise ServingStateError("table: not a complete snapshot")
    loaded, expired = [], []
    for i, entry in enumerate(_field(doc, "certificates", list)):
        if not isinstance(entry, dict):
            raise ServingStateError(f"certificates[{i}] is not an object")
        identity = _field(entry, "identity", str)
        try:
            held = certs.CertifiedKey.from_pem(
                identity, _field(entry, "key_pem", str), _field(entry, "chain_pem", str)
            )
        except (ValueError, TypeError, certs.PeerRejected) as exc:
            raise ServingStateError(f"certificates[{i}] ({identity}): {exc}") from exc
        if held.not_after.timestamp() <= now:
            expired.append(identity)
        else:
            loaded.append(held)
    return Saved(owner, saved_at, revision, table, tuple(loaded), tuple(expired))


class ServingStateFile:
    """Save and load the serving state at `path` (its directory is made 0700)."""

    def __init__(self, path: Path, *, node: str) -> None:
        self.path = path
        self.node = node

    def save(
        self, *, revision: int, table: pb.Snapshot, certificates: list[certs.CertifiedKey]
    ) -> None:
        data = encode(
            node=self.node,
            revision=revision,
            table=table,
            certificates=certificates,
            now=time.time(),
        )
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        tmp = directory / f".{self.path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an old temp file of ours may have had another mode
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def load(self, *, now: float | None = None) -> Saved | None:
        """The saved state; None when there is none. Raises ServingStateError when refused."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ServingStateError(f"cannot open: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ServingStateError("not a regular file")
            if st.st_uid != os.geteuid():
                raise ServingStateError(f"owned by uid {st.st_uid}, not by this agent")
            if st.st_mode & 0o077:
                raise ServingStateError(
                    f"mode {stat.S_IMODE(st.st_mode):04o}: others could read or change the keys"
                )
            with os.fdopen(fd, "rb") as f:
                fd = -1
                data = f.read()
        finally:
            if fd >= 0:
                os.close(fd)
        return decode(data, node=self.node, now=time.time() if now is None else now)


class ServingKeeper:
    """Loads the saved state into the table and the certificate store at start, and saves them
    whenever either changed (looked at every `interval` seconds, and once more on shutdown)."""

    def __init__(
        self,
        file: ServingStateFile,
        *,
        table: DestinationTable,
        certs: CertStore | None,
        interval: float = SAVE_INTERVAL,
    ) -> None:
        self.file = file
        self.table = table
        self.certs = certs
        self.interval = interval
        self.saves = 0
        self._saved_stamp: object = None
        self._forgotten = False

    def _stamp(self) -> object:
        t = self.table
        held = (
            tuple(sorted((i, id(h.certified)) for i, h in self.certs.held.items()))
            if self.certs is not None
            else ()
        )
        return (t.revision, id(t.services), id(t.pods), id(t.meshed_pods), t.synced, held)

    def load(self) -> TableChanged | None:
        """Serve from the saved state, if there is one we may use; what it changed in the table."""
        try:
            saved = self.file.load()
        except ServingStateError as exc:
            log.error("ignoring saved serving state %s: %s", self.file.path, exc)
            return None
        except OSError as exc:
            log.error("ignoring saved serving state %s: %s", self.file.path, exc)
            return None
        if saved is None:
            log.info("no saved serving state at %s", self.file.path)
            return None
        try:
            change = self.table.apply(pb.Update(revision=saved.revision, snapshot=saved.table))
        except ValueError as exc:
            log.error("ignoring saved serving state %s: table: %s", self.file.path, exc)
            return None
        if self.certs is not None:
            for held in saved.certificates:
                self.certs.install(held)
        age = max(time.time() - saved.saved_at, 0.0)
        log.info(
            "serving from the state saved %.0fs ago: table revision %d, %d certificate(s)%s",
            age,
            saved.revision,
            len(saved.certificates) if self.certs is not None else 0,
            f", {len(saved.expired)} expired and dropped" if saved.expired else "",
        )
        self._saved_stamp = self._stamp()
        return change

    def forget(self) -> None:
        """nodemesh is leaving the node: remove the saved keys and never save again."""
        self._forgotten = True
        self.file.path.unlink(missing_ok=True)
        try:
            self.file.path.parent.rmdir()
        except OSError:
            pass  # not ours alone, or already gone

    def save_if_changed(self) -> bool:
        stamp = self._stamp()
        if self._forgotten or stamp == self._saved_stamp or not self.table.synced:
            return False
        held = list(self.certs.held.values()) if self.certs is not None else []
        try:
            self.file.save(
                revision=self.table.revision,
                table=self.table.snapshot(),
                certificates=[h.certified for h in held],
            )
        except OSError as exc:
            log.warning("saving the serving state to %s failed: %s", self.file.path, exc)
            return False
        self._saved_stamp = stamp
        self.saves += 1
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.save_if_changed()
