"""Enrolment's answers to the CNI plugin's requests: ADD, DEL, CHECK, GC and STATUS."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from nodeagent import podplan
from nodeagent.enrol.attachments import AddRequest, Attachments, Outcome, netns_identity
from nodeagent.enrol.phases import Event, Phase
from nodeagent.enrol.statefile import PodRecord
from nodeagent.rules import build_pod_plan as build_plan
from nodemesh.model import PodInfo, PodKey

log = logging.getLogger(__name__)


class PluginRequests(Attachments):
    """The plugin's requests, each answered with an Outcome."""

    async def add(self, req: AddRequest) -> Outcome:
        if self.leaving:
            # Retried until install-cni has taken the plugin out of the conflist; should the
            # plugin stay (a hand-run uninstall beside a watch), pods wait rather than start
            # unmeshed.
            return Outcome("retry", "nodemesh is being uninstalled from this node")
        if not self.table.synced:
            await self._wait_for_sync()
            if not self.table.synced:
                return Outcome("retry", "agent has no state from the control plane yet")
        key = PodKey(req.namespace, req.name)
        self._adding[key] = self._adding.get(key, 0) + 1
        try:
            info = await self._wait_for_pod(key, req.uid)
            if info is None:
                return Outcome("retry", "pod not yet known to the agent, try again later")
            # The same netns under another id (adopted at start-up, or a runtime that re-ADDs
            # with a new id): take that record over rather than enrol the netns twice.
            other = self._find("", req.netns)
            if other is not None and other != req.container_id:
                async with self._lock(other):
                    if other in self.records and req.container_id not in self.records:
                        self._rekey(other, req.container_id)
            async with self._lock(req.container_id):
                return await self._add_locked(req, info)
        finally:
            self._adding[key] -= 1
            if not self._adding[key]:
                del self._adding[key]

    def _rekey(self, old: str, new: str) -> None:
        rec = self.records.pop(old)
        self.records[new] = replace(rec, container_id=new, origin="cni")
        self.phases[new] = self.phases.pop(old)
        if old in self.open_listeners:
            self.open_listeners[new] = self.open_listeners.pop(old)

    async def _wait_for_sync(self) -> None:
        try:
            await asyncio.wait_for(self._table_moved.wait(), self.pod_wait)
        except TimeoutError:
            pass

    async def _add_locked(self, req: AddRequest, info: PodInfo) -> Outcome:
        cid = req.container_id
        if self.leaving:  # un-meshing began while this ADD waited for the pod
            return Outcome("retry", "nodemesh is being uninstalled from this node")
        ident = netns_identity(req.netns)
        if ident is None:
            return Outcome("error", f"network namespace {req.netns} does not exist")
        if ident == self._own_netns:
            return Outcome("error", f"{req.netns} is the agent's own network namespace")
        phase = self.phases.get(cid, Phase.ABSENT)
        meshed = podplan.wants_mesh(info)
        if phase is Phase.ENROLLED:
            # A repeated ADD: make sure everything is still there.
            rec = self.records[cid]
            assert rec.settings is not None
            await self.rules.apply(rec.netns, build_plan(rec.settings))
            self._move(cid, Event.REPAIR)
            self._save()
            return Outcome("ok", "already enrolled", meshed=True)
        if phase is Phase.PASSIVE:
            self._move(cid, Event.DELETE)
            self._move(cid, Event.GONE)
            self.records.pop(cid, None)
        rec = PodRecord(
            container_id=cid,
            ifname=req.ifname,
            namespace=req.namespace,
            name=req.name,
            uid=req.uid or info.uid,
            netns=req.netns,
            netns_dev=ident.dev,
            netns_ino=ident.ino,
            ip=req.ips[0] if req.ips else info.ip,
            meshed=meshed,
            settings=(
                await self._settings(info, netns=req.netns, gateways=req.gateways)
                if meshed
                else None
            ),
        )
        if not meshed:
            self._move(cid, Event.ADD_PASSIVE)
            self.records[cid] = rec
            self._save()
            return Outcome("ok", _why_not_meshed(info), meshed=False)
        self._move(cid, Event.ADD_MESHED)
        try:
            await self._install(rec)
            self.records[cid] = rec
            self._save()
        except Exception as exc:
            self.records.pop(cid, None)
            if cid in self.open_listeners:
                await self._undo(rec)
            self._move(cid, Event.FAILED)
            log.warning("enrolling %s/%s failed: %s", req.namespace, req.name, exc)
            return Outcome("error", f"enrolment failed: {exc}")
        self._move(cid, Event.INSTALLED)
        log.info("enrolled %s/%s (%s)", rec.namespace, rec.name, rec.netns)
        # The pod's containers start once this is answered: with its certificate already held,
        # its first inbound connections and calls are not held waiting for one (as a sidecar
        # proxy's readiness waits for its identity). Bounded: a control plane that is away
        # delays pod starts by that much, no more.
        if self.identity_ready is not None and info.identity:
            if not await self.identity_ready(info.identity):
                log.warning(
                    "enrolled %s/%s before its certificate for %s came; its first connections "
                    "wait for it", rec.namespace, rec.name, info.identity,
                )  # fmt: skip
        return Outcome("ok", "enrolled", meshed=True)

    async def _undo(self, rec: PodRecord) -> None:
        try:
            await self._uninstall(rec, forget_metrics=True)
        except Exception as exc:
            log.warning("undoing enrolment of %s failed: %s", rec.key, exc)

    async def delete(self, container_id: str, netns: str) -> Outcome:
        cid = self._find(container_id, netns)
        if cid is None:
            return Outcome("ok", "not known")
        async with self._lock(cid):
            return await self._delete_locked(cid)

    async def _delete_locked(self, cid: str) -> Outcome:
        rec = self.records.get(cid)
        if rec is None:
            return Outcome("ok", "not known")
        self._move(cid, Event.DELETE)
        message = "removed"
        try:
            await self._uninstall(rec, forget_metrics=True)
        except Exception as exc:
            # The netns is usually on its way out; nothing of ours survives it.
            message = f"removed (rules could not be removed: {exc})"
            log.warning("removing rules of %s: %s", rec.key, exc)
        del self.records[cid]
        self._move(cid, Event.GONE)
        self._save()
        return Outcome("ok", message)

    async def check(self, container_id: str, namespace: str, name: str) -> Outcome:
        rec = self.records.get(container_id)
        if rec is None:
            info = self.table.pod(PodKey(namespace, name))
            if info is not None and podplan.wants_mesh(info):
                return Outcome("error", "pod is meshed but not enrolled", meshed=False)
            return Outcome("ok", "not enrolled", meshed=False)
        async with self._lock(container_id):
            if self.phases.get(container_id) is not Phase.ENROLLED:
                return Outcome("ok", "not meshed", meshed=False)
            problems = []
            listeners = self.open_listeners.get(container_id)
            if listeners is None or not listeners.is_open():
                problems.append("listeners are not open")
            assert rec.settings is not None
            try:
                diff = await self.rules.check(rec.netns, build_plan(rec.settings))
                problems += diff.describe()
            except Exception as exc:
                problems.append(f"rules cannot be read: {exc}")
            if problems:
                return Outcome("error", "; ".join(problems), meshed=True)
            return Outcome("ok", "rules and listeners in place", meshed=True)

    async def gc(self, valid: set[str]) -> Outcome:
        stale = [c for c, r in self.records.items() if r.origin == "cni" and c not in valid]
        for cid in stale:
            async with self._lock(cid):
                await self._delete_locked(cid)
        return Outcome("ok", f"forgot {len(stale)} attachment(s)")

    def status(self) -> Outcome:
        if not self.table.synced:
            return Outcome("retry", "not synchronised with the control plane yet")
        return Outcome("ok", f"{len(self.enrolled())} pod(s) enrolled")


def _why_not_meshed(info: PodInfo) -> str:
    if info.host_network:
        return "hostNetwork pod: not meshed"
    if info.labels.get("nodemesh.io/mesh") == "disabled":
        return "pod opted out of the mesh"
    return "namespace is not meshed"
