"""Where the ingress' objects come from: the Kubernetes API (list, then watch from the
resourceVersion; relist on 410; back off on errors) or the lab's object directory (polled, as
the control plane's local source reads it). Both fill an `Objects` and call `changed()`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from ingress.state import CLUSTER_SCOPED, KINDS, OPTIONAL_KINDS, Objects
from nodemesh.backoff import Backoff

log = logging.getLogger(__name__)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
Signature = tuple[int, int, int]
CRD_RECHECK = 30.0


class LabSource:
    """Polls `<state>/objects/<Kind>/[<namespace>/]<name>.yaml` (the lab's store)."""

    def __init__(self, root: Path, objects: Objects, *, interval: float = 0.3) -> None:
        self.root = root if root.name == "objects" else root / "objects"
        self.objects = objects
        self.interval = interval
        self._seen: dict[str, tuple[Signature, dict[str, Any] | None]] = {}
        self.ready = False

    def scan(self) -> dict[str, list[dict[str, Any]]]:
        """One pass: every object of each kind that changed since the previous pass."""
        updates: dict[str, list[dict[str, Any]]] = {}
        for kind in KINDS:
            files: dict[str, Signature] = {}
            base = self.root / kind
            folders = [base] if kind in CLUSTER_SCOPED else _subdirs(base)
            for folder in folders:
                for e in _entries(folder):
                    if e.name.endswith(".yaml") and not e.name.startswith("."):
                        try:
                            st = e.stat()
                        except FileNotFoundError:
                            continue
                        files[e.path] = (st.st_ino, st.st_mtime_ns, st.st_size)
            kind_changed = False
            for path, sig in files.items():
                known = self._seen.get(path)
                if known is not None and known[0] == sig:
                    continue
                kind_changed = True
                self._seen[path] = (sig, self._load(path))
            prefix = str(base) + os.sep
            for path in [p for p in self._seen if p.startswith(prefix) and p not in files]:
                del self._seen[path]
                kind_changed = True
            if kind_changed:
                updates[kind] = [
                    o for p, (_, o) in self._seen.items() if p.startswith(prefix) and o
                ]
        return updates

    def _load(self, path: str) -> dict[str, Any] | None:
        try:
            obj = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            log.warning("skipping %s: cannot read YAML: %s", path, str(e).splitlines()[0])
            return None
        return obj if isinstance(obj, dict) else None

    async def run(self, changed: Callable[[], None]) -> None:
        while True:
            updates = await asyncio.to_thread(self.scan)
            for kind, objs in updates.items():
                self.objects.replace(kind, objs)
            if updates or not self.ready:
                self.ready = True
                changed()
            await asyncio.sleep(self.interval)


def _subdirs(base: Path) -> list[Path]:
    return [Path(e.path) for e in _entries(base) if e.is_dir() and not e.name.startswith(".")]


def _entries(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


class Gone(Exception):
    """The watch's resourceVersion is too old (410): only a relist helps."""


class KubeSource:
    """One thread per kind (the official client is synchronous), each list + watch."""

    def __init__(self, api: Any, objects: Objects, *, watch_timeout: int = 300) -> None:
        self.api = api
        self.objects = objects
        self.watch_timeout = watch_timeout
        self.synced: set[str] = set()
        self.stopped = threading.Event()

    @property
    def ready(self) -> bool:
        return len(self.synced) == len(KINDS)

    def _listed(self, kind: str, items: list[dict[str, Any]]) -> None:
        self.objects.replace(kind, items)
        self.synced.add(kind)

    def _list_function(self, kind: str) -> Callable[..., Any]:
        from kubernetes import client

        core, net = client.CoreV1Api(self.api), client.NetworkingV1Api(self.api)
        functions: dict[str, Callable[..., Any]] = {
            "IngressClass": net.list_ingress_class,
            "Ingress": net.list_ingress_for_all_namespaces,
            "Service": core.list_service_for_all_namespaces,
            "Secret": core.list_secret_for_all_namespaces,
            "EndpointSlice": client.DiscoveryV1Api(self.api).list_endpoint_slice_for_all_namespaces,
            **{
                kind: partial(
                    client.CustomObjectsApi(self.api).list_cluster_custom_object,
                    "gateway.networking.k8s.io",
                    "v1",
                    plural,
                )
                for kind, plural in (("Gateway", "gateways"), ("HTTPRoute", "httproutes"))
            },
        }
        return functions[kind]

    async def run(self, changed: Callable[[], None]) -> None:
        loop = asyncio.get_running_loop()

        def on_loop(change: Callable[[], None]) -> None:
            # Objects is the loop's: the watch threads hand it their changes, never touch it.
            def apply() -> None:
                change()
                changed()

            loop.call_soon_threadsafe(apply)

        threads = [
            threading.Thread(target=self._follow, args=(k, on_loop), name=f"watch-{k}", daemon=True)
            for k in KINDS
        ]
        for t in threads:
            t.start()
        try:
            await asyncio.Event().wait()
        finally:
            # A thread blocked in a watch ends when its stream does (at most watch_timeout).
            self.stopped.set()

    def _follow(self, kind: str, on_loop: Callable[[Callable[[], None]], None]) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        fn = self._list_function(kind)
        backoff = Backoff()
        version = ""
        while not self.stopped.is_set():
            try:
                if not version:
                    resp = fn(_preload_content=False)
                    body = json.loads(resp.data)
                    items = body.get("items") or []
                    on_loop(partial(self._listed, kind, items))
                    version = body["metadata"]["resourceVersion"]
                # A stream silent past the server's own timeout is dead (a half-open
                # connection): the read timeout ends it and the watch starts again.
                for event in watch.Watch().stream(
                    fn,
                    resource_version=version,
                    timeout_seconds=self.watch_timeout,
                    _request_timeout=(10, self.watch_timeout + 30),
                ):
                    obj, etype = event["raw_object"], event["type"]
                    if etype == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone()
                        raise RuntimeError(obj.get("message", "watch error"))
                    version = obj["metadata"]["resourceVersion"]
                    if self.stopped.is_set():
                        return
                    if etype == "BOOKMARK":
                        continue
                    if etype == "DELETED":
                        on_loop(partial(self.objects.delete, kind, obj))
                    else:
                        on_loop(partial(self.objects.put, kind, obj))
                backoff.reset()
            except Gone:
                log.info("%s watch expired (410): listing again", kind)
                version = ""
            except ApiException as e:
                if e.status == 410:
                    version = ""
                    continue
                if e.status == 404 and kind in OPTIONAL_KINDS:
                    # The Gateway API CRDs are not installed: none of these; look again later.
                    on_loop(partial(self._listed, kind, []))
                    version = ""
                    self.stopped.wait(CRD_RECHECK)
                    continue
                delay = backoff.delay()
                log.warning("%s: API error %s %s; again in %.1f s", kind, e.status, e.reason, delay)
                version = ""
                self.stopped.wait(delay)
            except Exception as e:  # noqa: BLE001 - the watch must outlive any one failure
                delay = backoff.delay()
                log.warning("%s: watch failed (%s); again in %.1f s", kind, e, delay)
                version = ""
                self.stopped.wait(delay)


def load_api_client(kubeconfig: str | None = None) -> Any:
    """In-cluster service account if present, else the kubeconfig."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)
