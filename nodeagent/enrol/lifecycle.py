"""Enrolment across the agent's life: restoring at start-up, adopting running pods, the
periodic sweep, un-meshing the node when nodemesh leaves, and closing listeners at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os

from nodeagent import podplan
from nodeagent.enrol.attachments import Attachments, netns_identity
from nodeagent.enrol.phases import Event, Phase
from nodeagent.enrol.statefile import PodRecord
from nodeagent.observe.metrics import PODS_ENROLLED
from nodemesh.model import PodKey
from nodemesh.netns import NetnsId

log = logging.getLogger(__name__)


class AgentLifecycle(Attachments):
    """Start-up (restore, adopt), the sweep, un-meshing the node and shutdown."""

    async def restore(self) -> None:
        """Take over what the previous agent enrolled: reopen listeners, repair rules."""
        for rec in self.store.load():
            cid = rec.container_id
            if netns_identity(rec.netns) != NetnsId(rec.netns_dev, rec.netns_ino):
                log.info("forgetting %s: its network namespace is gone", rec.key)
                continue
            self.records[cid] = rec
            if not rec.meshed:
                self._move(cid, Event.ADD_PASSIVE)
                continue
            self._move(cid, Event.ADD_MESHED)
            try:
                await self._install(rec)
            except Exception as exc:
                # Its rules (if any) stay: the pod fails closed until the sweep succeeds.
                log.error("restoring %s failed: %s", rec.key, exc)
                self._move(cid, Event.FAILED)
                self._move(cid, Event.ADD_PASSIVE)
                self.records[cid] = rec
                continue
            self._move(cid, Event.INSTALLED)
        self._save()

    async def adopt(self) -> int:
        """Enrol meshed pods of this node that run already but were never announced to us."""
        if self.leaving:
            return 0
        known = {r.key for r in self.records.values()} | set(self._adding)
        wanted = {
            info.ip: info
            for info in self.table.pods.values()
            if podplan.wants_mesh(info) and info.ip and info.key not in known
        }
        if not wanted:
            return 0
        skip = {NetnsId(r.netns_dev, r.netns_ino) for r in self.records.values()}
        if self._own_netns is not None:
            skip.add(self._own_netns)
        found = await asyncio.to_thread(self.find_netns, list(wanted), skip)
        adopted = 0
        for ip, (path, ident) in found.items():
            info = wanted[ip]
            cid = f"adopted-{info.uid or os.urandom(6).hex()}"
            # Read before the checks below: nothing may be awaited between them and recording.
            settings = await self._settings(info, netns=path)
            async with self._lock(cid):
                taken = {r.key for r in self.records.values()} | set(self._adding)
                if cid in self.records or info.key in taken:
                    continue
                rec = PodRecord(
                    container_id=cid,
                    ifname="eth0",
                    namespace=info.key.namespace,
                    name=info.key.name,
                    uid=info.uid,
                    netns=path,
                    netns_dev=ident.dev,
                    netns_ino=ident.ino,
                    ip=ip,
                    meshed=True,
                    settings=settings,
                    origin="adopted",
                )
                self._move(cid, Event.ADD_MESHED)
                # Recorded before installing: an ADD for this netns now waits for our lock.
                self.records[cid] = rec
                try:
                    await self._install(rec)
                except Exception as exc:
                    log.error("adopting %s failed: %s", info.key, exc)
                    del self.records[cid]
                    self._move(cid, Event.FAILED)
                    continue
                self._move(cid, Event.INSTALLED)
                adopted += 1
                log.info("adopted running pod %s (%s)", info.key, path)
        if adopted:
            self._save()
        return adopted

    async def sweep(self) -> None:
        """Forget attachments whose netns vanished; retry pods meant to be enrolled but not."""
        changed = False
        for cid, rec in list(self.records.items()):
            alive = netns_identity(rec.netns) == NetnsId(rec.netns_dev, rec.netns_ino)
            async with self._lock(cid):
                if self.records.get(cid) is not rec:
                    continue
                if not alive:
                    listeners = self.open_listeners.pop(cid, None)
                    if listeners is not None:
                        listeners.close(forget_metrics=True)
                        self.released()
                    del self.records[cid]
                    self.phases.pop(cid, None)
                    changed = True
                    log.info("forgot %s: its network namespace is gone", rec.key)
                elif rec.meshed and self.phases.get(cid) is Phase.PASSIVE:
                    # A restore that failed: the pod's rules hold it closed until this works.
                    info = self.table.pod(rec.key)
                    if info is None or podplan.wants_mesh(info):
                        await self._mesh_running(cid, rec, info)
        for cid in set(self._locks) - set(self.records):
            lock = self._locks[cid]
            if not lock.locked():
                del self._locks[cid]
        PODS_ENROLLED.set(sum(p is Phase.ENROLLED for p in self.phases.values()))
        if changed:
            self._save()

    async def unmesh_all(self) -> list[PodKey]:
        """nodemesh leaves the node: every pod's rules out, then its listeners closed (a redirect
        never points at nothing), and nothing enrolled again. Returns the pods un-meshed."""
        self.leaving = True
        done: list[PodKey] = []
        for cid in list(self.records):
            async with self._lock(cid):
                rec = self.records.pop(cid, None)
                if rec is None:
                    continue
                alive = netns_identity(rec.netns) == NetnsId(rec.netns_dev, rec.netns_ino)
                if rec.meshed and alive:
                    try:
                        await self.rules.remove(rec.netns)
                    except Exception as exc:
                        log.error("uninstall: removing the rules of %s failed: %s", rec.key, exc)
                listeners = self.open_listeners.pop(cid, None)
                if listeners is not None:
                    listeners.close(forget_metrics=True)
                    self.released()
                if self.phases.pop(cid, None) is Phase.ENROLLED:
                    done.append(rec.key)
        PODS_ENROLLED.set(0)
        self._save()
        return done

    def stop_listening(self) -> None:
        """Close every listener (shutdown); rules and records stay for the next agent."""
        for listeners in self.open_listeners.values():
            listeners.close()
        self.open_listeners.clear()
