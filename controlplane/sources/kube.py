"""The `kubernetes` source: list, then watch from the resourceVersion, per kind, with the official
client. Relists on 410 Gone, backs off on errors, treats a silent stream as dropped.

While the API server cannot be reached, a cheap probe (GET /version, at most once a second for
all kinds) cuts the backoff short the moment it answers again, so a grown backoff never delays
the changes made right after an outage. A kind that has not been followed for `stale_after`
seconds is reported with KindStale (the index then says "not synced") until it is back.

The official client is synchronous, so each kind is followed by one thread whose events are
handed to the event loop through a bounded queue (a slow index slows the watch, never the loop)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import urllib3
from kubernetes import client

from controlplane.metrics import (
    SOURCE_EVENTS,
    SOURCE_REJECTED,
    SOURCE_RELISTS,
    SOURCE_WATCH_ERRORS,
)
from controlplane.sources.events import (
    KINDS,
    BadObject,
    EventType,
    Inventory,
    KindStale,
    KindSynced,
    Obj,
    ObjectChanged,
    SourceEvent,
    check_object,
)
from nodemesh import authz
from nodemesh.backoff import Backoff

log = logging.getLogger(__name__)

API_VERSIONS = {
    "Namespace": "v1",
    "Node": "v1",
    "Pod": "v1",
    "Service": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "ReplicaSet": "apps/v1",
    "Deployment": "apps/v1",
    authz.KIND: authz.API_VERSION,
    "HTTPRoute": "gateway.networking.k8s.io/v1",
    "GRPCRoute": "gateway.networking.k8s.io/v1",
}
# Kinds of our own CRDs: a cluster without the CRD (404) has none of them, which is a listing
# (synced, empty), not an outage; the kind is listed again every CRD_RECHECK seconds.
# The Gateway API's route CRDs are not ours either, and often not installed.
OPTIONAL_KINDS = frozenset({authz.KIND, "HTTPRoute", "GRPCRoute"})
CRD_RECHECK = 30.0


class Gone(Exception):
    """The resourceVersion we watch from is too old (410): only a relist helps."""


def list_function(api: client.ApiClient, kind: str) -> Callable[..., Any]:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    functions: dict[str, Callable[..., Any]] = {
        "Namespace": core.list_namespace,
        "Node": core.list_node,
        "Pod": core.list_pod_for_all_namespaces,
        "Service": core.list_service_for_all_namespaces,
        "EndpointSlice": client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces,
        "ReplicaSet": apps.list_replica_set_for_all_namespaces,
        "Deployment": apps.list_deployment_for_all_namespaces,
        authz.KIND: partial(
            client.CustomObjectsApi(api).list_cluster_custom_object,
            authz.GROUP,
            authz.VERSION,
            authz.PLURAL,
        ),
        **{
            kind: partial(
                client.CustomObjectsApi(api).list_cluster_custom_object,
                "gateway.networking.k8s.io",
                "v1",
                plural,
            )
            for kind, plural in (("HTTPRoute", "httproutes"), ("GRPCRoute", "grpcroutes"))
        },
    }
    return functions[kind]


class KubeSource:
    name = "kubernetes"

    def __init__(
        self,
        api: client.ApiClient,
        *,
        kinds: tuple[str, ...] = KINDS,
        watch_timeout: int = 300,
        inactivity_timeout: float = 90.0,
        connect_timeout: float = 5.0,
        page_size: int = 500,
        backoff: Callable[[], Backoff] = Backoff,
        queue_size: int = 1000,
        stale_after: float = 5.0,
        probe_interval: float = 1.0,
    ) -> None:
        self.api = api
        self.kinds = kinds
        self.watch_timeout = watch_timeout
        self.inactivity_timeout = inactivity_timeout
        self.connect_timeout = connect_timeout
        self.page_size = page_size
        self.make_backoff = backoff
        self.queue_size = queue_size
        self.stale_after = stale_after
        self.probe = ServerProbe(api, interval=probe_interval, timeout=min(connect_timeout, 2.0))
        self.rejected = 0

    async def events(self) -> AsyncIterator[SourceEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[SourceEvent] = asyncio.Queue(self.queue_size)
        stop = threading.Event()
        watchers = [_KindWatcher(self, kind, loop, queue, stop) for kind in self.kinds]
        for w in watchers:
            w.thread.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()
            for w in watchers:
                w.interrupt()
            await asyncio.to_thread(_join, watchers)


class ServerProbe:
    """Does the API server answer? One GET /version per `interval` at most, shared by the kinds."""

    def __init__(self, api: client.ApiClient, *, interval: float, timeout: float) -> None:
        self.api, self.interval, self.timeout = api, interval, timeout
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._answered = False

    def answered_since(self, since: float) -> bool:
        """True when a probe made after `since` (time.monotonic) got an answer from the server."""
        with self._lock:
            if time.monotonic() - self._at >= self.interval:
                self._at = time.monotonic()
                self._answered = self._ask()
            return self._answered and self._at > since

    def _ask(self) -> bool:
        try:
            # The raw answer: any well-formed or not body will do, and parsing it could fail.
            resp: Any = client.VersionApi(self.api).get_code(
                _request_timeout=(self.timeout, self.timeout), _preload_content=False
            )
            resp.release_conn()
        except client.ApiException as exc:
            return 0 < (exc.status or 0) < 500  # 401/403 too: the server is there
        except Exception:  # noqa: BLE001 (refused, reset, timed out: not there yet)
            return False
        return True


def _join(watchers: list[_KindWatcher]) -> None:
    for w in watchers:
        w.thread.join(10)
        if w.thread.is_alive():
            log.warning("watch thread for %s did not stop", w.kind)


class _KindWatcher:
    """List and watch one kind in a thread until `stop` is set."""

    def __init__(
        self,
        source: KubeSource,
        kind: str,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[SourceEvent],
        stop: threading.Event,
    ) -> None:
        self.source, self.kind, self.loop, self.queue, self.stop = source, kind, loop, queue, stop
        self.fn = list_function(source.api, kind)
        self.inventory = Inventory(kind)
        self.backoff = source.make_backoff()
        self.down_since: float | None = None  # time.monotonic() of the first failure in a row
        self.down_since_unix = 0.0
        self.up_since: float | None = None  # time.monotonic() the current watch connected
        self.stale = False
        self._crd_missing_logged = False
        self._response: urllib3.BaseHTTPResponse | None = None
        self.thread = threading.Thread(target=self.run, name=f"watch-{kind}", daemon=True)

    def interrupt(self) -> None:
        resp = self._response
        if resp is not None:
            try:
                resp.shutdown()  # unblocks a read waiting in the watch thread
            except Exception:  # noqa: BLE001 (already closed: nothing to interrupt)
                pass

    def run(self) -> None:
        try:
            self._follow()
        except _Stopped:
            return

    def _follow(self) -> None:
        rv: str | None = None
        reason = "start"
        while not self.stop.is_set():
            try:
                if rv is None:
                    rv = self._relist(reason)
                rv = self._watch(rv)
                self.backoff.reset()  # a clean end (server timeout): watch again at once
            except Gone:
                log.info("%s: resourceVersion %s expired (410); relisting", self.kind, rv)
                rv, reason = None, "gone"
            except _Stopped:
                return
            except _Inactive:
                # An idle watch with no bookmark for a while: normal on a quiet cluster. Watch
                # again from the same version at once; a dead server fails the next connect.
                log.debug("%s: no event for %.0fs; watching again", self.kind, self.inactivity)
                self.backoff.reset()
            except Exception as exc:  # noqa: BLE001 (any failure: back off, keep following)
                if self.stop.is_set():
                    return
                SOURCE_WATCH_ERRORS.labels(self.kind).inc()
                if isinstance(exc, client.ApiException) and exc.status == 410:
                    rv, reason = None, "gone"
                    continue
                if (
                    isinstance(exc, client.ApiException)
                    and exc.status == 404
                    and self.kind in OPTIONAL_KINDS
                ):
                    self._no_crd()
                    rv, reason = None, "crd"
                    continue
                failed_at = time.monotonic()
                if self.up_since is not None and failed_at - self.up_since >= self.stable_after:
                    self.backoff.reset()  # a watch that held for a while: start over
                self.up_since = None
                first = self.down_since is None
                self._went_down(failed_at)
                delay = self.backoff.delay()
                # The first failure in a row is news; the retries after it are not (the kind is
                # reported stale once, below, if it lasts).
                log.log(
                    logging.WARNING if first else logging.DEBUG,
                    "%s: %s; retrying in %.1fs",
                    self.kind,
                    _describe(exc),
                    delay,
                )
                if rv is None:
                    reason = "error"
                self._wait(delay, failed_at=failed_at, probe=_server_side(exc))

    def _no_crd(self) -> None:
        """The API server does not serve this kind (its CRD is not installed): none exist."""
        if len(self.inventory) or not self._crd_missing_logged:
            log.warning(
                "%s: the API server does not serve this kind (CRD not installed?); treating "
                "it as empty, looking again every %.0fs",
                self.kind,
                CRD_RECHECK,
            )
            self._crd_missing_logged = True
        self._came_back(listed=True)
        for event in self.inventory.replace([]):
            self._emit(event)
        self._emit(KindSynced(self.kind))
        if self.stop.wait(CRD_RECHECK):
            raise _Stopped

    @property
    def inactivity(self) -> float:
        return self.source.inactivity_timeout

    def _went_down(self, now: float) -> None:
        if self.down_since is None:
            self.down_since, self.down_since_unix = now, time.time()

    @property
    def stable_after(self) -> float:
        return self.source.stale_after

    def _came_back(self, *, listed: bool) -> None:
        """A listing or a watch connection succeeded: the kind is followed again. A listing
        resets the backoff and announces KindSynced itself once its objects are out; a watch
        connection only counts for the backoff once it has held (`stable_after`), so a server
        that accepts watches and drops them at once is not hammered."""
        if listed:
            self.backoff.reset()
        else:
            self.up_since = time.monotonic()
        was_stale = self.stale
        self.down_since, self.stale = None, False
        if was_stale:
            log.info("%s: following the API server again", self.kind)
            if not listed:
                self._emit(KindSynced(self.kind))

    def _wait(self, delay: float, *, failed_at: float, probe: bool) -> None:
        """Sleep `delay`, cut short when the server answers again (if it was the server's end
        that failed); report the kind stale once it has been down for `stale_after`."""
        deadline = time.monotonic() + delay
        interval = self.source.probe.interval
        while not self.stop.is_set():
            now = time.monotonic()
            down = now - (self.down_since or now)
            if not self.stale and down >= self.source.stale_after:
                self.stale = True
                log.warning(
                    "%s: not followed for %.0fs; serving the last known state, reported as "
                    "not synced until the API server answers",
                    self.kind,
                    down,
                )
                self._emit(KindStale(self.kind, self.down_since_unix))
            if now >= deadline:
                return
            if probe and self.source.probe.answered_since(failed_at):
                return
            self.stop.wait(min(interval / 2, deadline - now))

    def _relist(self, reason: str) -> str:
        items: list[Obj] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.source.page_size}
            if token:
                kwargs["_continue"] = token
            resp = self.fn(
                _preload_content=False,
                _request_timeout=(self.source.connect_timeout, 60),
                **kwargs,
            )
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
            items.extend(body.get("items") or [])
            meta = body.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                break
        SOURCE_RELISTS.labels(self.kind, reason).inc()
        self._came_back(listed=True)
        good = [obj for obj in map(self._accept, items) if obj is not None]
        for event in self.inventory.replace(good):
            self._emit(event)
        self._emit(KindSynced(self.kind))
        return str(meta.get("resourceVersion") or "")

    def _watch(self, rv: str) -> str:
        resp = self.fn(
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self.source.watch_timeout,
            _preload_content=False,
            # The read timeout is the inactivity timeout: a silent stream counts as dropped.
            _request_timeout=(self.source.connect_timeout, self.source.inactivity_timeout),
        )
        self._response = resp
        try:
            if self.stop.is_set():
                raise _Stopped
            self._came_back(listed=False)
            for line in _lines(resp):
                rv = self._handle(line, rv)
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise _Inactive from exc
        finally:
            self._response = None
            # Never hand a watch connection back to the pool: it may be half-read or shut.
            resp.close()
            resp.release_conn()
        return rv

    def _handle(self, line: bytes, rv: str) -> str:
        try:
            event = json.loads(line)
            type_, obj = event["type"], event["object"]
        except (ValueError, KeyError, TypeError):
            self._reject(f"unreadable watch event {line[:80]!r}")
            return rv
        if type_ == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if code == 410:
                raise Gone
            raise client.ApiException(status=code or 500, reason=str(obj)[:200])
        new_rv = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or rv)
        if type_ == "BOOKMARK":
            return new_rv
        if type_ not in ("ADDED", "MODIFIED", "DELETED"):
            self._reject(f"unknown watch event type {type_!r}")
            return rv
        good = self._accept(obj)
        if good is not None:
            change = ObjectChanged(EventType(type_), self.kind, good)
            self.inventory.record(change)
            self._emit(change)
        return new_rv

    def _accept(self, obj: Any) -> Obj | None:
        if isinstance(obj, dict):
            obj.setdefault("kind", self.kind)
            obj.setdefault("apiVersion", API_VERSIONS[self.kind])
        try:
            return check_object(self.kind, obj)
        except BadObject as exc:
            self._reject(str(exc))
            return None

    def _reject(self, reason: str) -> None:
        self.source.rejected += 1
        SOURCE_REJECTED.labels("kubernetes", self.kind).inc()
        log.warning("%s: skipping object: %s", self.kind, reason)

    def _emit(self, event: SourceEvent) -> None:
        if isinstance(event, ObjectChanged):
            SOURCE_EVENTS.labels("kubernetes", event.kind, event.type.value).inc()
        future = asyncio.run_coroutine_threadsafe(self.queue.put(event), self.loop)
        while True:
            try:
                future.result(timeout=0.5)
                return
            except concurrent.futures.TimeoutError:
                if self.stop.is_set():
                    future.cancel()
                    raise _Stopped from None


class _Stopped(Exception):
    pass


class _Inactive(Exception):
    """The watch stream said nothing for the inactivity timeout."""


def _server_side(exc: BaseException) -> bool:
    """Worth retrying as soon as the server answers: it was unreachable or failing (5xx), not
    refusing us something (4xx) that a retry a second later would be refused again."""
    if isinstance(exc, client.ApiException):
        return not 400 <= (exc.status or 0) < 500
    return True


def _lines(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    pending = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


def _describe(exc: BaseException) -> str:
    if isinstance(exc, client.ApiException):
        return f"API error {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
