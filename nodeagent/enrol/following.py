"""Enrolment keeping up with the destination table: a namespace meshed or un-meshed, a pod's
settings changed.
"""

from __future__ import annotations

import asyncio
import logging

from nodeagent import podplan
from nodeagent.enrol.attachments import Attachments
from nodeagent.enrol.phases import Event, Phase
from nodeagent.rules import RedirectSettings
from nodeagent.rules import build_pod_plan as build_plan
from nodeagent.upstream.table import TableChanged
from nodemesh.model import PodInfo

log = logging.getLogger(__name__)


class TableFollowing(Attachments):
    """The table's changes: which attachments to look at again, and bringing each in line."""

    def table_changed(self, change: TableChanged) -> set[str]:
        """Note a table change; returns the attachments whose desired state may have moved."""
        self._table_moved.set()
        self._table_moved = asyncio.Event()
        if change.snapshot:
            return set(self.records)
        return {cid for cid, r in self.records.items() if r.key in change.pods}

    # --- keeping up with the table --------------------------------------------------------

    async def reconcile(self, cid: str) -> None:
        """Bring one attachment in line with the table: mesh, un-mesh, or re-plan it."""
        async with self._lock(cid):
            rec = self.records.get(cid)
            if rec is None:
                return
            info = self.table.pod(rec.key)
            if info is None or (rec.uid and info.uid and rec.uid != info.uid):
                return  # the pod object is gone or is another pod now: keep things as they are
            want = podplan.wants_mesh(info)
            phase = self.phases.get(cid)
            if want and phase is Phase.PASSIVE:
                await self._mesh_running(cid, rec, info)
            elif not want and phase is Phase.ENROLLED:
                self._move(cid, Event.UNMESH)
                try:
                    await self._uninstall(rec, forget_metrics=True)
                except Exception as exc:
                    log.error("un-meshing %s: removing rules failed: %s", rec.key, exc)
                self.records[cid] = rec.with_settings(None, meshed=False)
                self._move(cid, Event.REMOVED)
                self._save()
                log.info("un-meshed %s", rec.key)
            elif want and phase is Phase.ENROLLED:
                assert rec.settings is not None
                settings = await self._settings(
                    info, netns=rec.netns, gateways=_gateways_of(rec.settings, info)
                )
                if settings != rec.settings:
                    await self.rules.apply(rec.netns, build_plan(settings))
                    self.records[cid] = rec.with_settings(settings, meshed=True)
                    self._move(cid, Event.REPAIR)
                    self._save()


def _gateways_of(settings: RedirectSettings, info: PodInfo) -> tuple[str, ...]:
    """The gateways a pod's settings were planned with (its probe sources but the node IP)."""
    return tuple(s for s in settings.probe_sources if s != info.host_ip)
