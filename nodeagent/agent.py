"""The agent put together: start-up order, the background loops, and a draining shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nodeagent import l4proxy, metrics
from nodeagent.admin import AdminServer
from nodeagent.certstore import CertStore
from nodeagent.cniserver import CniServer
from nodeagent.config import AgentConfig
from nodeagent.destination_client import DestinationClient, open_channel, read_token
from nodeagent.dnsnames import DnsNames
from nodeagent.enrolment import Enroller
from nodeagent.eventlog import EventLog
from nodeagent.heap import BurstWatch, TrimLater, install_report_signal, trim
from nodeagent.identity_client import IdentityClient, identities_on_node
from nodeagent.listeners import PodListeners, ProxyRuntime
from nodeagent.meshedrecord import MeshedRecord
from nodeagent.observe import AgentSink
from nodeagent.podnetns import find_netns_for
from nodeagent.rules.worker import RuleWorker
from nodeagent.servingstate import ServingKeeper, ServingStateFile
from nodeagent.statefile import StateFile
from nodeagent.stats.exposition import AggregateCollector
from nodeagent.table import DestinationTable, TableChanged
from nodeagent.tap_client import TapClient
from nodeagent.telemetry_client import TelemetryClient
from nodeagent.uninstalling import UninstallWatch
from nodemesh import tasks

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 10.0
BURST_CHECK_INTERVAL = 5.0


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.table = DestinationTable(config.node)
        # What the proxy observes: aggregated for /metrics and the telemetry stream, and
        # handed to taps while someone watches.
        self.sink = AgentSink(node=config.node)
        self.collector = AggregateCollector(
            self.sink.aggregate, tcp=not metrics.LEGACY_TCP_COUNTERS
        )
        l4proxy.HALF_CLOSED_TIMEOUT = config.half_closed_timeout_seconds
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
            listeners=lambda pod: PodListeners(pod, self.runtime),
            store=StateFile(config.state_file),
            find_netns=lambda ips, skip: find_netns_for(ips, netns_dir=config.netns_dir, skip=skip),
            mark=config.mark,
            pod_wait=config.pod_wait_seconds,
            released=self.trimmer.poke,
        )
        self.cni = CniServer(self.enroller, config.cni_socket)
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
        self.started = False
        self._dirty: set[str] = set()
        self._adopt_pending = False
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    def _readiness(self) -> tuple[bool, str]:
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
        the free pages back once it is over. malloc_trim only: a gc pass would stall the loop."""
        watch = BurstWatch()
        while True:
            await asyncio.sleep(BURST_CHECK_INTERVAL)
            rt = self.runtime
            peak, rt.peak_relays = rt.peak_relays, len(rt.relays)
            if watch.ended(len(rt.relays), peak):
                trim()

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
        channel = open_channel(
            cfg.controlplane, insecure=cfg.controlplane_insecure, ca_file=cfg.controlplane_ca
        )
        token_file = cfg.token_file
        client = DestinationClient(
            channel=channel,
            table=self.table,
            on_change=self._table_changed,
            token=(lambda: read_token(token_file, node=cfg.node)) if token_file else lambda: None,
        )
        token = (lambda: read_token(token_file, node=cfg.node)) if token_file else lambda: None
        try:
            metrics.REGISTRY.register(self.collector)
            install_report_signal(cfg.memory_report_dir)
            await self.admin.start()
            # Before the stream can deliver anything: a fresh snapshot must win over the saved.
            saved = self.keeper.load()
            if saved is not None:
                self._table_changed(saved)
            self._tasks.append(tasks.spawn(self.keeper.run(), name="serving state keeper"))
            self._tasks.append(tasks.spawn(client.run(), name="destination client"))
            if self.certs is not None:
                self.identity = IdentityClient(
                    channel=channel,
                    store=self.certs,
                    wanted=lambda: identities_on_node(self.table),
                    token=token,
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
                    token=token,
                )
                tap = TapClient(channel=channel, taps=self.sink.taps, token=token)
                self._tasks.append(tasks.spawn(telemetry.run(), name="telemetry client"))
                self._tasks.append(tasks.spawn(tap.run(), name="tap client"))
            # Take over the previous agent's pods before answering the plugin, so a DEL or GC
            # never races the restore of the same pod.
            await self.enroller.restore()
            await self.cni.start()
            self._tasks.append(tasks.spawn(self._reconciler(), name="reconciler"))
            self._tasks.append(tasks.spawn(self.uninstall_watch.run(), name="uninstall watch"))
            self._tasks.append(tasks.spawn(self._sweeper(), name="sweeper"))
            self._tasks.append(tasks.spawn(self._forget_gone_pods(), name="gone pod series"))
            self._tasks.append(tasks.spawn(self._trim_after_bursts(), name="heap trim"))
            self.started = True
            log.info(
                "agent for node %s up: %d pod(s) restored, cni socket %s",
                cfg.node,
                len(self.enroller.enrolled()),
                cfg.cni_socket,
            )
            await stop.wait()
        finally:
            await self.shutdown()
            await channel.close()

    async def shutdown(self) -> None:
        """Stop accepting, let open connections finish until the deadline, then cut them."""
        if self.started and await self.uninstall_watch.wait(self.config.uninstall_wait_seconds):
            log.info("nodemesh left this node; stopping")
        log.info("draining")
        await self.cni.stop()
        self.enroller.stop_listening()
        await tasks.cancel_all(self._tasks)
        self._tasks.clear()
        self.keeper.save_if_changed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_seconds
        while self.runtime.relays and loop.time() < deadline:
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
    await Agent(config).run(stop)
