"""Enrolment: which pod attachments have nodemesh rules and listeners, and making it so.

Requests from the CNI plugin (add, del, check, gc), changes in the destination table (a
namespace meshed or un-meshed), the agent's start (state file, running pods it never saw) and a
periodic sweep (namespaces gone while nobody said so) all end up here. Work on one attachment is
serialised by its lock; different pods proceed concurrently (rule writes queue on the one rule
thread). Rules and listeners stay in place when the agent stops: a pod must never run unmeshed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from nodeagent.enrol import podplan
from nodeagent.enrol.phases import Event, Phase, next_phase
from nodeagent.enrol.statefile import PodRecord
from nodeagent.observe.metrics import PODS_ENROLLED
from nodeagent.pod import PodAddress
from nodeagent.rules import PodPlan, RedirectSettings, RuleDiff
from nodeagent.rules import build_pod_plan as build_plan
from nodeagent.upstream.table import DestinationTable, TableChanged
from nodemesh.model import PodInfo, PodKey
from nodemesh.netns import NetnsId

log = logging.getLogger(__name__)


class Rules(Protocol):
    async def apply(self, netns: str, plan: PodPlan) -> RuleDiff: ...
    async def remove(self, netns: str) -> object: ...
    async def check(self, netns: str, plan: PodPlan) -> RuleDiff: ...


class Listeners(Protocol):
    async def open(self) -> None: ...
    def close(self, *, forget_metrics: bool = False) -> None: ...
    def is_open(self) -> bool: ...


class Store(Protocol):
    def load(self) -> list[PodRecord]: ...
    def save(self, records: Iterable[PodRecord]) -> None: ...


# Blocking: for wanted IPs, the netns (path, identity) holding each, skipping known namespaces.
NetnsFinder = Callable[[Iterable[str], set[NetnsId]], dict[str, tuple[str, NetnsId]]]


@dataclass(frozen=True)
class Outcome:
    """The answer to one plugin request: status ok | error | retry, as in the CNI protocol."""

    status: str
    message: str = ""
    meshed: bool | None = None


@dataclass(frozen=True)
class AddRequest:
    container_id: str
    ifname: str
    netns: str
    namespace: str
    name: str
    uid: str
    ips: tuple[str, ...]
    # The node-side gateways of the pod's IPv4 addresses, from the CNI prevResult.
    gateways: tuple[str, ...] = ()


def netns_gateways(netns: str) -> tuple[str, ...]:
    """The IPv4 default gateways seen inside `netns` (blocking), for pods enrolled without a
    CNI result to read them from (adopted, or meshed while running). Empty when unreadable."""
    try:
        done = subprocess.run(
            ["nsenter", f"--net={netns}", "ip", "-4", "-j", "route", "show", "default"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        routes = json.loads(done.stdout) if done.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        log.warning("reading the default route in %s: %s", netns, exc)
        return ()
    return tuple(r["gateway"] for r in routes if isinstance(r, dict) and r.get("gateway"))


def netns_identity(path: str) -> NetnsId | None:
    try:
        return NetnsId.of(path)
    except OSError:
        return None


class Enroller:
    def __init__(
        self,
        *,
        table: DestinationTable,
        rules: Rules,
        listeners: Callable[[PodAddress], Listeners],
        store: Store,
        find_netns: NetnsFinder,
        mark: int,
        pod_wait: float = 5.0,
        released: Callable[[], None] = lambda: None,
    ) -> None:
        self.table = table
        self.rules = rules
        self.make_listeners = listeners
        self.store = store
        self.find_netns = find_netns
        self.mark = mark
        self.pod_wait = pod_wait
        # Called when a pod's listeners are closed for good (the agent trims its heap later).
        self.released = released
        self.records: dict[str, PodRecord] = {}
        self.phases: dict[str, Phase] = {}
        self.open_listeners: dict[str, Listeners] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._table_moved = asyncio.Event()
        self._adding: dict[PodKey, int] = {}
        self._own_netns = netns_identity("/proc/self/ns/net")
        # nodemesh is leaving this node (install-cni's uninstall flag): enrol nothing any more.
        self.leaving = False

    # --- bookkeeping ----------------------------------------------------------------------

    def _lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    def _move(self, cid: str, event: Event) -> None:
        phase = next_phase(self.phases.get(cid, Phase.ABSENT), event)
        if phase is Phase.ABSENT:
            self.phases.pop(cid, None)
            self._locks.pop(cid, None)
        else:
            self.phases[cid] = phase
        PODS_ENROLLED.set(sum(p is Phase.ENROLLED for p in self.phases.values()))

    def _save(self) -> None:
        self.store.save(self.records.values())

    def enrolled(self) -> list[PodRecord]:
        return [r for c, r in self.records.items() if self.phases.get(c) is Phase.ENROLLED]

    def _find(self, container_id: str, netns: str) -> str | None:
        if container_id in self.records:
            return container_id
        ident = netns_identity(netns) if netns else None
        for cid, rec in self.records.items():
            if ident is not None and (rec.netns_dev, rec.netns_ino) == (ident.dev, ident.ino):
                return cid
        return None

    # --- the table ------------------------------------------------------------------------

    def table_changed(self, change: TableChanged) -> set[str]:
        """Note a table change; returns the attachments whose desired state may have moved."""
        self._table_moved.set()
        self._table_moved = asyncio.Event()
        if change.snapshot:
            return set(self.records)
        return {cid for cid, r in self.records.items() if r.key in change.pods}

    async def _wait_for_pod(self, key: PodKey, uid: str) -> PodInfo | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.pod_wait
        while True:
            info = self.table.pod(key)
            if info is not None and (not uid or not info.uid or info.uid == uid):
                return info
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._table_moved.wait(), remaining)
            except TimeoutError:
                return None

    async def _settings(
        self, info: PodInfo, *, netns: str, gateways: Iterable[str] = ()
    ) -> RedirectSettings:
        """The pod's settings; its gateway comes from the CNI result when there was one (or
        from the settings it had), else from the routes inside its netns."""
        known = tuple(gateways)
        if not known:
            known = await asyncio.to_thread(netns_gateways, netns)
        return podplan.redirect_settings(info, mark=self.mark, gateways=known)

    # --- installing and removing ----------------------------------------------------------

    async def _install(self, rec: PodRecord) -> None:
        """Listeners, then rules (a redirect never points at nothing); undo both on failure."""
        assert rec.settings is not None
        listeners = self.make_listeners(PodAddress(rec.namespace, rec.name, rec.netns, rec.ip))
        await listeners.open()
        try:
            await self.rules.apply(rec.netns, build_plan(rec.settings))
        except BaseException:
            listeners.close()
            try:
                await self.rules.remove(rec.netns)
            except Exception as exc:
                log.warning("undoing rules in %s failed: %s", rec.netns, exc)
            raise
        self.open_listeners[rec.container_id] = listeners

    async def _uninstall(self, rec: PodRecord, *, forget_metrics: bool) -> None:
        listeners = self.open_listeners.pop(rec.container_id, None)
        if listeners is not None:
            listeners.close(forget_metrics=forget_metrics)
            self.released()
        if netns_identity(rec.netns) == NetnsId(rec.netns_dev, rec.netns_ino):
            await self.rules.remove(rec.netns)

    # --- plugin requests ------------------------------------------------------------------

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

    async def _mesh_running(self, cid: str, rec: PodRecord, info: PodInfo | None) -> None:
        if netns_identity(rec.netns) != NetnsId(rec.netns_dev, rec.netns_ino):
            return  # the sweep forgets it
        settings = await self._settings(info, netns=rec.netns) if info is not None else rec.settings
        if settings is None:
            return
        self._move(cid, Event.MESH)
        meshed = rec.with_settings(settings, meshed=True)
        try:
            await self._install(meshed)
        except Exception as exc:
            log.error("meshing running pod %s failed: %s", rec.key, exc)
            self._move(cid, Event.ABANDONED)
            return
        self.records[cid] = meshed
        self._move(cid, Event.INSTALLED)
        self._save()
        log.info("meshed running pod %s", rec.key)

    # --- start-up and sweeping ------------------------------------------------------------

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


def _gateways_of(settings: RedirectSettings, info: PodInfo) -> tuple[str, ...]:
    """The gateways a pod's settings were planned with (its probe sources but the node IP)."""
    return tuple(s for s in settings.probe_sources if s != info.host_ip)


def _why_not_meshed(info: PodInfo) -> str:
    if info.host_network:
        return "hostNetwork pod: not meshed"
    if info.labels.get("nodemesh.io/mesh") == "disabled":
        return "pod opted out of the mesh"
    return "namespace is not meshed"
