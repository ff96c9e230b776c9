"""What every phase of enrolment shares: the parts it works with (rules, listeners, the state
file), the answers it gives, and one attachment's bookkeeping, settings and install/uninstall.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from nodeagent import podplan
from nodeagent.enrol.phases import Event, Phase, next_phase
from nodeagent.enrol.statefile import PodRecord
from nodeagent.observe.metrics import PODS_ENROLLED
from nodeagent.pod import PodAddress
from nodeagent.rules import PodPlan, RedirectSettings, RuleDiff
from nodeagent.rules import build_pod_plan as build_plan
from nodeagent.upstream.table import DestinationTable
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


class Attachments:
    """The pod attachments the agent knows, their phases and locks; the Enroller's base."""

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
        identity_ready: Callable[[str], Awaitable[bool]] | None = None,
    ) -> None:
        self.table = table
        # Waits (bounded) for a meshed pod's workload certificate before its ADD is answered.
        self.identity_ready = identity_ready
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
            listeners.close(forget_metrics=True)  # not enrolled: no series stays behind
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

    # --- meshing a running pod ----------------------------------------------------------

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
