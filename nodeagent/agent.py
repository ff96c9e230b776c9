"""The agent put together: start-up order, the background loops, and a draining shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from nodeagent.admin import AdminServer
from nodeagent.config import AgentConfig
from nodeagent.enrol.cniserver import CniServer
from nodeagent.enrol.enrolment import Enroller
from nodeagent.enrol.meshedrecord import MeshedRecord
from nodeagent.enrol.statefile import StateFile
from nodeagent.enrol.uninstalling import UninstallWatch
from nodeagent.handover.keeper import KeeperLink
from nodeagent.handover.servingstate import ServingKeeper, ServingStateFile
from nodeagent.handover.sockets import HandoverError, HandoverServer, Inherited, Predecessor
from nodeagent.handover.wire import SocketEntry
from nodeagent.heap import BurstWatch, FreeWatch, TrimLater, install_report_signal, trim
from nodeagent.observe import metrics
from nodeagent.observe.eventlog import EventLog
from nodeagent.observe.sink import AgentSink
from nodeagent.observe.stats.exposition import AggregateCollector
from nodeagent.proxy import l4proxy, router
from nodeagent.proxy.dnsnames import DnsNames
from nodeagent.proxy.l7 import http1
from nodeagent.proxy.listeners import PodListeners, ProxyRuntime
from nodeagent.proxy.podnetns import find_netns_for
from nodeagent.proxy.router import Router
from nodeagent.rules.worker import RuleWorker
from nodeagent.upstream.certstore import CertStore
from nodeagent.upstream.channel import open_channel
from nodeagent.upstream.destination import DestinationClient, read_token
from nodeagent.upstream.identity import IdentityClient, identities_on_node
from nodeagent.upstream.table import DestinationTable, TableChanged
from nodeagent.upstream.tap import TapClient
from nodeagent.upstream.telemetry import TelemetryClient
from nodemesh import tasks

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 10.0
# How long a meshed pod's CNI ADD waits for its workload certificate (the plugin waits 30 s).
ADD_CERT_WAIT = 3.0
BURST_CHECK_INTERVAL = 5.0


class Agent:
    def __init__(self, config: AgentConfig, *, keeper: KeeperLink | None = None) -> None:
        self.config = config
        # The parent process holding copies of our listening sockets (--keep-sockets).
        self.socket_keeper = keeper
        self.table = DestinationTable(config.node)
        # What the proxy observes: aggregated for /metrics and the telemetry stream, and
        # handed to taps while someone watches.
        self.sink = AgentSink(node=config.node)
        self.collector = AggregateCollector(
            self.sink.aggregate, tcp=not metrics.LEGACY_TCP_COUNTERS
        )
        l4proxy.HALF_CLOSED_TIMEOUT = config.half_closed_timeout_seconds
        http1.BODY_TIMEOUT = config.request_body_timeout_seconds
        http1.BODY_MIN_RATE = config.request_body_min_rate
        self.dns_names = DnsNames(self.table, cluster_domain=config.cluster_domain)
        # Upstream sockets are made in pod namespaces on these threads; a few suffice, each
        # switch takes microseconds.
        self.netns_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="nodemesh-netns")
        self.event_log = EventLog(self.sink, config.record_events) if config.record_events else None
        # Workload certificates (mTLS between agents) when a trust anchor is configured.
        self.certs = (
            CertStore(
                trust_anchors_pem=config.trust_anchors.read_bytes(),
                resume=config.tls_resumption,
            )
            if config.trust_anchors is not None
            else None
        )
        self.runtime = ProxyRuntime(
            mark=config.mark,
            executor=self.netns_pool,
            table=self.table,
            sink=self.event_log or self.sink,
            certs=self.certs,
            dns_names=self.dns_names,
            keeper=keeper,
            multiplex=config.tunnel_mux,
            observe_once=config.observe_once,
        )
        self.identity: IdentityClient | None = None
        # The table and certificates, kept on the node so a restart needs no control plane.
        self.keeper = ServingKeeper(
            ServingStateFile(config.serving_state_file, node=config.node),
            table=self.table,
            certs=self.certs,
        )
        self.rules = RuleWorker()
        # Pods leaving free their listeners' memory; hand it back to the kernel after a burst.
        self.trimmer = TrimLater()
        self.enroller = Enroller(
            table=self.table,
            rules=self.rules,
            listeners=lambda pod: PodListeners(pod, self.runtime, self._inherited_for(pod.netns)),
            store=StateFile(config.state_file),
            find_netns=lambda ips, skip: find_netns_for(ips, netns_dir=config.netns_dir, skip=skip),
            mark=config.mark,
            pod_wait=config.pod_wait_seconds,
            released=self.trimmer.poke,
            identity_ready=self._certificate_for,
        )
        self.cni = CniServer(self.enroller, config.cni_socket)
        self.router = (
            Router(
                self.runtime,
                host=config.router_host,
                port=config.router_port,
                node=config.node,
                cluster_domain=config.cluster_domain,
                listeners_of=self._listeners_of,
                identity_wanted=lambda: self.identity.kick() if self.identity else None,
            )
            if config.router_port
            else None
        )
        self.runtime.host_routed = partial(
            router.serve_host_routed, cluster_domain=config.cluster_domain
        )
        # Beside the CNI socket, on the host: for the plugin while we are away, and install-cni's
        # uninstall flag for us.
        self.meshed_record = MeshedRecord(config.cni_socket.parent, node=config.node)
        self.uninstall_watch = UninstallWatch(
            config.cni_socket.parent,
            enroller=self.enroller,
            record=self.meshed_record,
            state_file=config.state_file,
            forget_serving=self.keeper.forget,
        )
        self.admin = AdminServer(
            host=config.admin_host, port=config.admin_port, ready=self._readiness
        )
        self.handover = HandoverServer(
            config.handover_path,
            pods=lambda: len(self.enroller.enrolled()),
            freeze=self._freeze,
            resume=self._resume,
            handed=self._handed,
        )
        # Sockets taken over from the agent this one replaces, until each pod claims its own.
        self.inherited: Inherited | None = None
        self.successor_pid: int | None = None
        self.started = False
        self._enrolment_tasks: list[asyncio.Task[Any]] = []
        self._dirty: set[str] = set()
        self._adopt_pending = False
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    def _listeners_of(self, ip: str) -> PodListeners | None:
        """The enrolled pod of this node with address `ip` (a router-mode caller)."""
        for listeners in self.enroller.open_listeners.values():
            if isinstance(listeners, PodListeners) and listeners.pod.ip == ip:
                return listeners
        return None

    async def _certificate_for(self, identity: str) -> bool:
        """Whether `identity`'s certificate is held, waiting up to ADD_CERT_WAIT for it."""
        if self.certs is None:
            return True  # no mTLS (no trust anchor): nothing to wait for
        return await self.certs.wait(identity, ADD_CERT_WAIT) is not None

    def _wanted_identities(self) -> set[str]:
        """Certificates to hold: this node's meshed pods', and its router callers'."""
        wanted = identities_on_node(self.table)
        if self.router is not None:
            wanted |= self.router.identities()
        return wanted

    def _readiness(self) -> tuple[bool, str]:
        if self.successor_pid is not None:
            return False, f"handed over to agent pid {self.successor_pid}; draining"
        if self.handover.successor is not None:
            # hostNetwork: the kubelet's probe of the new agent's pod lands here until the new
            # agent has the admin socket; it must not see "ready" before it has taken over.
            return False, f"handing over to agent pid {self.handover.successor}"
        if not self.started:
            return False, "starting"
        if not self.table.synced:
            return False, "waiting for the control plane"
        return True, f"ready, {len(self.enroller.enrolled())} pod(s) enrolled"

    def _table_changed(self, change: TableChanged) -> None:
        if self.identity is not None and change.pods:
            self.identity.kick()
        self._dirty |= self.enroller.table_changed(change)
        if change.snapshot or change.pods or change.services:
            self.meshed_record.update(self.table)
        if change.services:
            self.runtime.services_changed(change.services)
        if change.snapshot:
            self._adopt_pending = True
        self._work.set()

    async def _reconciler(self) -> None:
        """One pass at a time over what the table changed; bursts of changes coalesce."""
        while True:
            await self._work.wait()
            self._work.clear()
            dirty, self._dirty = self._dirty, set()
            for cid in sorted(dirty):
                try:
                    await self.enroller.reconcile(cid)
                except Exception:
                    log.exception("reconciling %s failed", cid)
            if self._adopt_pending:
                self._adopt_pending = False
                try:
                    await self.enroller.adopt()
                except Exception:
                    log.exception("adopting running pods failed")

    async def _trim_after_bursts(self) -> None:
        """A burst of connections (thousands of TLS objects and buffers) grows the heap; give
        the free pages back once it is over, and whenever glibc keeps more than a few MB free
        (steady load fragments the heap without a burst ever ending: 100 pods, 1000 rps and
        200 new connections/s left 22 MB free in it for good). malloc_trim only: a gc pass
        would stall the loop."""
        watch, free = BurstWatch(), FreeWatch()
        while True:
            await asyncio.sleep(BURST_CHECK_INTERVAL)
            rt = self.runtime
            peak, rt.peak_relays = rt.peak_relays, len(rt.relays)
            if watch.ended(len(rt.relays), peak) or free.due():
                trim()
                free.trimmed()

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.enroller.sweep()
                # Pods that got their IP after the last snapshot (or whose netns appeared
                # late) are looked for again; a no-op when every meshed pod is known.
                await self.enroller.adopt()
            except Exception:
                log.exception("sweep failed")

    async def _take_from_keeper(self) -> Inherited | None:
        if self.socket_keeper is None:
            return None
        try:
            kept = await asyncio.to_thread(self.socket_keeper.take)
        except HandoverError as exc:
            log.warning("%s; starting without them", exc)
            return None
        if not kept.count():
            return None
        return kept

    def _inherited_for(self, netns: str) -> dict[str, socket.socket] | None:
        return self.inherited.take_pod(netns) if self.inherited is not None else None

    async def _warm_up(self) -> None:
        """As a successor: wait (bounded) until this agent can serve as well as the old one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.warm_up_seconds
        while loop.time() < deadline:
            if self.table.synced and (
                self.certs is None
                or all(self.certs.current(i) is not None for i in identities_on_node(self.table))
            ):
                return
            await asyncio.sleep(0.05)
        log.warning(
            "taking over after %.0f s without %s",
            self.config.warm_up_seconds,
            "the control plane's table" if not self.table.synced else "every pod's certificate",
        )

    async def _freeze(self) -> list[tuple[SocketEntry, socket.socket]]:
        """As a predecessor asked to hand over: stop changing enrolment, save it, list sockets."""
        await self.cni.pause()
        await tasks.cancel_all(self._enrolment_tasks)
        self._enrolment_tasks.clear()
        # The successor restores from these files: they are written here for the last time.
        self.enroller.store.save(self.enroller.records.values())
        self.keeper.save_if_changed()
        entries: list[tuple[SocketEntry, socket.socket]] = []
        for cid, listeners in self.enroller.open_listeners.items():
            rec = self.enroller.records.get(cid)
            socks: dict[str, socket.socket] = getattr(listeners, "sockets", {})
            if rec is not None and socks:
                entries += [(SocketEntry("pod", n, rec.netns), s) for n, s in socks.items()]
        if self.cni.sock is not None:
            entries.append((SocketEntry("cni", "cni"), self.cni.sock))
        if self.admin.sock is not None:
            entries.append((SocketEntry("admin", "admin"), self.admin.sock))
        if self.router is not None and self.router.sock is not None:
            entries.append((SocketEntry("router", "router"), self.router.sock))
        return entries

    async def _resume(self) -> None:
        """The successor gave up: go on as before."""
        await self.cni.resume()
        self._start_enrolment_tasks()
        self._adopt_pending = True
        self._work.set()

    async def _handed(self, pid: int) -> None:
        """The successor serves every socket now: stop accepting; what was accepted drains."""
        self.successor_pid = pid
        self.enroller.stop_listening()
        self.runtime.go_away()
        if self.router is not None:
            self.router.close()
        self.cni.release()
        self.admin.close()
        if self.socket_keeper is not None:
            self.socket_keeper.drop()
        log.info("agent pid %d took over; draining %d connection(s)", pid, len(self.runtime.relays))

    def _start_enrolment_tasks(self) -> None:
        """What changes enrolment or writes the node's files: one agent at a time runs these."""
        self._enrolment_tasks = [
            tasks.spawn(self._reconciler(), name="reconciler"),
            tasks.spawn(self.uninstall_watch.run(), name="uninstall watch"),
            tasks.spawn(self._sweeper(), name="sweeper"),
            tasks.spawn(self.keeper.run(), name="serving state keeper"),
        ]

    async def _take_over(self, predecessor: Predecessor | None) -> Predecessor | None:
        """Warm up, then take the predecessor's sockets; without one, bind our own admin port."""
        if predecessor is not None:
            await self._warm_up()
            try:
                self.inherited = await predecessor.take()
            except HandoverError as exc:
                log.warning("%s; binding new sockets beside the old agent", exc)
                predecessor = None
        admin = self.inherited.admin if self.inherited is not None else None
        if self.inherited is not None:
            self.inherited.admin = None
        await self.admin.start(admin)
        return predecessor

    async def _forget_gone_pods(self) -> None:
        """Metric series of pods that left the cluster go once Prometheus had time to scrape
        their last values (config.gone_pod_grace_seconds)."""
        grace = self.config.gone_pod_grace_seconds
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(SWEEP_INTERVAL, grace / 4))
            try:
                gone = self.sink.forget_gone_pods(self.table, now=loop.time(), grace=grace)
            except Exception:
                log.exception("forgetting the series of gone pods failed")
                continue
            if gone:
                log.debug("forgot %d metric series of pods that left the cluster", gone)

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        predecessor = None
        source = "restored"
        if (kept := await self._take_from_keeper()) is not None:
            # The agent before us in this container died: its sockets (and what queued in
            # them meanwhile) are ours now.
            self.inherited, source = kept, "taken back from the socket keeper"
        else:
            # An agent still running on this node hands its sockets over instead of us binding.
            predecessor = await Predecessor.find(cfg.handover_path)
        token_file = cfg.token_file
        channel = open_channel(
            cfg.controlplane,
            insecure=cfg.controlplane_insecure,
            ca_file=cfg.controlplane_ca,
            # Read for every call: a projected token rotates under the agent.
            token=(lambda: read_token(token_file, node=cfg.node)) if token_file else None,
        )
        client = DestinationClient(channel=channel, table=self.table, on_change=self._table_changed)
        try:
            metrics.REGISTRY.register(self.collector)
            install_report_signal(cfg.memory_report_dir)
            if predecessor is None:
                await self._take_over(None)
            # Before the stream can deliver anything: a fresh snapshot must win over the saved.
            saved = self.keeper.load()
            if saved is not None:
                self._table_changed(saved)
            self._tasks.append(tasks.spawn(client.run(), name="destination client"))
            if self.certs is not None:
                self.identity = IdentityClient(
                    channel=channel,
                    store=self.certs,
                    wanted=self._wanted_identities,
                )
                self._tasks.append(tasks.spawn(self.identity.run(), name="identity client"))
            else:
                log.warning("no trust anchor (--trust-anchors/--controlplane-ca): no mTLS")
            if cfg.telemetry:
                telemetry = TelemetryClient(
                    channel=channel,
                    aggregate=self.sink.aggregate,
                    node=cfg.node,
                    pods_enrolled=lambda: len(self.enroller.enrolled()),
                    enrolled_pods=lambda: [
                        (r.namespace, r.name, r.uid) for r in self.enroller.enrolled()
                    ],
                )
                tap = TapClient(channel=channel, taps=self.sink.taps)
                self._tasks.append(tasks.spawn(telemetry.run(), name="telemetry client"))
                self._tasks.append(tasks.spawn(tap.run(), name="tap client"))
            if predecessor is not None:
                predecessor = await self._take_over(predecessor)
            try:
                # Take over the previous agent's pods before answering the plugin, so a DEL or
                # GC never races the restore of the same pod.
                await self.enroller.restore()
                await self.cni.start(self.inherited.cni if self.inherited is not None else None)
            except BaseException as exc:
                if predecessor is not None:
                    await predecessor.abort(f"successor failed to start: {exc!r}")
                raise
            router_sock = None
            if self.inherited is not None:
                self.inherited.cni = None
                router_sock, self.inherited.router = self.inherited.router, None
                if self.router is None and router_sock is not None:
                    router_sock.close()  # router mode turned off: the port closes with us
                    router_sock = None
                self.inherited.close()  # sockets of pods gone meanwhile
                self.inherited = None
            if predecessor is not None:
                await predecessor.confirm()
                source = f"taken over from pid {predecessor.pid}"
            if self.router is not None:
                try:
                    await self.router.start(router_sock)
                except OSError:
                    log.exception("router mode is off on this node")
            if self.socket_keeper is not None and self.cni.sock is not None and self.admin.sock:
                node_socks = [
                    (SocketEntry("cni", "cni"), self.cni.sock),
                    (SocketEntry("admin", "admin"), self.admin.sock),
                ]
                if self.router is not None and self.router.sock is not None:
                    node_socks.append((SocketEntry("router", "router"), self.router.sock))
                self.socket_keeper.keep(node_socks)
            self.handover.start()
            self._tasks.append(tasks.spawn(self.handover.serve(), name="hand-over"))
            self._start_enrolment_tasks()
            self._tasks.append(tasks.spawn(self._forget_gone_pods(), name="gone pod series"))
            self._tasks.append(tasks.spawn(self._trim_after_bursts(), name="heap trim"))
            self.started = True
            log.info(
                "agent for node %s up: %d pod(s) %s, cni socket %s",
                cfg.node,
                len(self.enroller.enrolled()),
                source,
                cfg.cni_socket,
            )
            await stop.wait()
        finally:
            await self.shutdown()
            channel.close()

    async def shutdown(self) -> None:
        """Hand over to a successor if one comes (serving on meanwhile), else stop accepting;
        let open connections finish until the deadline, then cut them."""
        if self.started and self.successor_pid is None:
            loop = asyncio.get_running_loop()
            until = loop.time() + self.config.handover_wait_seconds
            log.info(
                "stopping: serving on for up to %.0f s while a successor may take over",
                self.config.handover_wait_seconds,
            )
            # Serving on meanwhile: a successor may also take over while install-cni is asked.
            if await self.uninstall_watch.wait(self.config.uninstall_wait_seconds):
                log.info("nodemesh left this node; stopping")
            elif self.successor_pid is None:
                await self.handover.wait(max(0.0, until - loop.time()))
        if self.successor_pid is None:
            log.warning(
                "no successor took over: closing listeners; new connections of meshed pods "
                "fail until the next agent starts"
            )
        log.info("draining %d connection(s)", len(self.runtime.relays))
        # The keeper (and the socket park beside this container) keep the listeners: the next
        # agent of this container takes them back with what queued meanwhile. After a
        # hand-over they were let go already (_handed).
        self.runtime.keeper = None
        await self.cni.stop()
        self.enroller.stop_listening()
        self.runtime.go_away()
        if self.router is not None:
            self.router.close()
        await tasks.cancel_all([*self._tasks, *self._enrolment_tasks])
        self._tasks.clear()
        self._enrolment_tasks.clear()
        self.handover.close()
        if self.inherited is not None:
            self.inherited.close()
        if self.successor_pid is None:  # after a hand-over, the successor keeps it
            self.keeper.save_if_changed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_seconds
        # Shared tunnel connections too: each closes once its peer has seen the drain notice
        # (nodeagent.proxy.mux.go_away); exiting before would reset what it still had on its way.
        while (self.runtime.relays or self.runtime.mux_sessions) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for relay in list(self.runtime.relays):
            relay.abort()
        self.admin.close()
        try:
            metrics.REGISTRY.unregister(self.collector)
        except KeyError:
            pass  # never registered: start-up failed before
        if self.event_log is not None:
            self.event_log.close()
        await self.rules.aclose()
        self.trimmer.cancel()
        self.netns_pool.shutdown(wait=False, cancel_futures=True)
        log.info("stopped; pod rules stay in place")


async def serve(config: AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Agent(config, keeper=KeeperLink.from_env()).run(stop)
