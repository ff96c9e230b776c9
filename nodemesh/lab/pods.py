"""One pod's life in the lab, as a kubelet and container runtime would run it: a network namespace
wired by the node's CNI chain, containers as host processes inside it (restarted per
restartPolicy with backoff), readiness probes, and a clean teardown (CNI DEL, then the netns)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodemesh.lab import objects
from nodemesh.lab.cni import LOOPBACK_CONF, CniError, CniRunner, PodAttachment, pod_ip
from nodemesh.lab.container import INIT, ContainerConfigError, container_spec, expand
from nodemesh.lab.ledger import Ledger, process_start_time, same_process
from nodemesh.lab.network import NodeSpec, render_hosts, render_resolv, run
from nodemesh.lab.paths import ETC_NETNS, LabPaths
from nodemesh.lab.probes import run_probe
from nodemesh.lab.procs import children, kill_processes_in, signal_pids
from nodemesh.tasks import cancel_all, spawn

log = logging.getLogger(__name__)

GRACE_SECONDS = 5.0  # the lab caps terminationGracePeriodSeconds to keep `lab down` quick
MAX_BACKOFF = 30.0


@dataclass
class NodeContext:
    """What pods on one node share: its namespace, CNI config dir and a lock that serialises CNI
    calls on the node (the bridge plugin creates cni0 on first use)."""

    spec: NodeSpec
    netns: str
    conf_dir: Path
    cni: CniRunner
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def conflist(self) -> dict[str, Any]:
        """The first config in the conf dir by name, as kubelet/containerd pick it."""
        files = sorted(
            p for p in self.conf_dir.iterdir() if p.suffix in (".conflist", ".conf", ".json")
        )
        if not files:
            raise CniError("runtime", 7, f"no CNI config in {self.conf_dir}")
        data: dict[str, Any] = json.loads(files[0].read_text())
        if "plugins" not in data:  # a single-plugin .conf
            data = {"cniVersion": data.get("cniVersion"), "name": data["name"], "plugins": [data]}
        return data


@dataclass
class LabContext:
    paths: LabPaths
    ledger: Ledger
    nodes: dict[str, NodeContext]
    env_path: str
    on_change: Callable[[dict[str, Any]], None]
    services: Callable[[], list[dict[str, Any]]]
    # The files of a configMap/secret/projected volume of a pod on a node (nodemesh.lab.volumes).
    volume_files: Callable[
        [dict[str, Any], NodeSpec, dict[str, Any]], dict[str, tuple[bytes, int]]
    ] = lambda pod, node, vol: {}
    # What a kubelet puts in every container's environment to reach the API server.
    api_env: dict[str, str] = field(default_factory=dict)


def container_env(
    container: dict[str, Any],
    pod: dict[str, Any],
    *,
    node: NodeSpec,
    path: str,
    api_env: dict[str, str] | None = None,
) -> dict[str, str]:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
    fields = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": node.name,
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP", ""),
        "status.hostIP": node.ip,
    }
    env = {
        "PATH": path,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "HOSTNAME": meta["name"],
        "POD_NAME": meta["name"],
        "POD_NAMESPACE": meta["namespace"],
        "POD_IP": status.get("podIP", ""),
        "NODE_NAME": node.name,
        "PYTHONUNBUFFERED": "1",
        **(api_env or {}),
    }
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
        elif "valueFrom" in item:
            ref = (item["valueFrom"].get("fieldRef") or {}).get("fieldPath")
            if ref in fields:
                env[item["name"]] = fields[ref]
    return env


class PodRunner:
    def __init__(self, pod: dict[str, Any], *, lab: LabContext) -> None:
        self.pod = pod
        self.lab = lab
        meta = pod["metadata"]
        self.namespace, self.name = meta["namespace"], meta["name"]
        self.node = lab.nodes[pod["spec"]["nodeName"]]
        self.host_network = bool(pod["spec"].get("hostNetwork"))
        self.netns = (
            self.node.netns if self.host_network else lab.paths.pod_netns(self.namespace, self.name)
        )
        self.attachment = PodAttachment(
            container_id=meta["uid"].replace("-", ""),
            netns=f"/run/netns/{self.netns}",
            ifname="eth0",
            namespace=self.namespace,
            name=self.name,
            uid=meta["uid"],
        )
        self.cni_result: dict[str, Any] | None = None
        self.sandbox_made = False
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.ready: dict[str, bool] = {}
        self.restarts: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._children: list[asyncio.Task[None]] = []

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def start(self) -> None:
        self._task = spawn(self._run(), name=f"pod {self.key}")

    async def _run(self) -> None:
        backoff = 1.0
        while not self.host_network:
            try:
                await self._make_sandbox()
                break
            except (CniError, OSError, RuntimeError) as e:
                # As a runtime does: undo what was done, report, retry with backoff.
                log.warning("pod %s: sandbox failed: %s; retrying in %.0f s", self.key, e, backoff)
                self._set_status(phase="Pending", reason="SandboxFailed", message=str(e))
                await self._remove_sandbox()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        ip = self.node.spec.ip if self.host_network else pod_ip(self.cni_result or {})
        status = self.pod.setdefault("status", {})
        status.update(
            podIP=ip,
            podIPs=[{"ip": ip}],
            hostIP=self.node.spec.ip,
            phase="Running",
            startTime=objects.now(),
        )
        status.pop("reason", None)
        status.pop("message", None)
        self._publish()
        for c in self.pod["spec"].get("initContainers") or []:
            if not await self._run_to_completion(c):
                return
        for c in self.pod["spec"]["containers"]:
            self.ready[c["name"]] = False
            self.restarts[c["name"]] = 0
            self._children.append(spawn(self._keep_running(c), name=f"container {self.key}"))
        await asyncio.gather(*self._children)

    async def _make_sandbox(self) -> None:
        paths, ledger = self.lab.paths, self.lab.ledger
        etc = ETC_NETNS / self.netns
        ledger.netns(self.netns)
        ledger.path_created(etc)
        self.sandbox_made = True
        await run("ip", "netns", "add", self.netns)
        # The node's own /run/netns holds it too: the CNI chain (run with the node's view) and
        # the node agent (hostPath /var/run/netns) find the pod's netns there, as on a node.
        on_node = self._node_netns_file
        on_node.touch()
        await run("mount", "--bind", self.attachment.netns, str(on_node))
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(render_resolv(self.namespace))
        (etc / "hosts").write_text("127.0.0.1\tlocalhost\n")
        paths.logs(self.namespace, self.name).mkdir(parents=True, exist_ok=True)
        async with self.node.lock:
            lo = {"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [dict(LOOPBACK_CONF)]}
            lo_attach = PodAttachment(**{**self.attachment.__dict__, "ifname": "lo"})
            await self.node.cni.run_chain(lo, command="ADD", pod=lo_attach)
            conflist = self.node.conflist()
            self.cni_result = await self.node.cni.run_chain(
                conflist, command="ADD", pod=self.attachment
            )
        self.write_hosts()

    def write_hosts(self) -> None:
        if self.host_network or self.cni_result is None:
            return
        hosts = ETC_NETNS / self.netns / "hosts"
        text = render_hosts(
            pod_ip=pod_ip(self.cni_result),
            pod_name=self.name,
            namespace=self.namespace,
            services=self.lab.services(),
        )
        # Rewrite in place: processes see /etc/hosts through a bind mount of this very inode.
        with open(hosts, "w", encoding="utf-8") as f:
            f.write(text)

    async def _remove_sandbox(self) -> None:
        if not self.sandbox_made or self.host_network:
            return
        async with self.node.lock:
            if self.cni_result is not None or Path(self.attachment.netns).exists():
                try:
                    conflist = self.node.conflist()
                    await self.node.cni.run_chain(
                        conflist, command="DEL", pod=self.attachment, cached_result=self.cni_result
                    )
                except (CniError, OSError, ValueError) as e:
                    log.warning("pod %s: CNI DEL failed: %s", self.key, e)
        self.cni_result = None
        on_node = self._node_netns_file
        if on_node.exists():
            if os.path.ismount(on_node):
                await run("umount", "-l", str(on_node))
            on_node.unlink(missing_ok=True)
        if Path(self.attachment.netns).exists():
            await kill_processes_in(self.attachment.netns)
            await run("ip", "netns", "del", self.netns)
        shutil.rmtree(ETC_NETNS / self.netns, ignore_errors=True)
        self.sandbox_made = False

    async def _keep_running(self, container: dict[str, Any]) -> None:
        name = container["name"]
        policy = self.pod["spec"].get("restartPolicy", "Always")
        backoff = 1.0
        probe_task: asyncio.Task[None] | None = None
        while True:
            started = time.monotonic()
            proc = await self._spawn(container)
            # Publish the new containerID now, not at the next readiness change: `lab exec`
            # enters the container through it, also while it is not (or never) ready.
            self._publish()
            probe = container.get("readinessProbe")
            if probe:
                probe_task = spawn(self._probe_loop(container, probe), name=f"probe {self.key}")
            else:
                self._set_ready(name, True)
            rc = await proc.wait()
            if probe_task:
                await cancel_all([probe_task])
            self._set_ready(name, False)
            self._append_log(name, f"--- container {name} exited with status {rc}")
            if policy == "Never" or (policy == "OnFailure" and rc == 0):
                return
            if time.monotonic() - started > 60:
                backoff = 1.0
            self.restarts[name] += 1
            self._publish()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _run_to_completion(self, container: dict[str, Any]) -> bool:
        """Run an init container until it succeeds (retrying with backoff unless the pod's
        restartPolicy is Never); False when the pod has failed for good."""
        backoff = 1.0
        while True:
            proc = await self._spawn(container)
            rc = await proc.wait()
            self._append_log(container["name"], f"--- init container exited with status {rc}")
            if rc == 0:
                return True
            if self.pod["spec"].get("restartPolicy", "Always") == "Never":
                self._set_status(
                    phase="Failed",
                    reason="InitContainerFailed",
                    message=f"init container {container['name']} exited {rc}",
                )
                return False
            self._set_status(
                phase="Pending",
                reason="InitContainerFailed",
                message=f"init container {container['name']} exited {rc}; retrying",
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def _spawn(self, container: dict[str, Any]) -> asyncio.subprocess.Process:
        """Start a container; retry (as the kubelet does) while its spec cannot be honoured."""
        backoff = 1.0
        while True:
            try:
                return await self._start_container(container)
            except ContainerConfigError as e:
                self._append_log(container["name"], f"--- container {container['name']}: {e}")
                self._set_status(phase="Pending", reason="CreateContainerConfigError",
                                 message=str(e))  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _start_container(self, container: dict[str, Any]) -> asyncio.subprocess.Process:
        name = container["name"]
        env = container_env(
            container,
            self.pod,
            node=self.node.spec,
            path=self.lab.env_path,
            api_env=self.lab.api_env,
        )
        argv = [expand(str(a), env) for a in [*container["command"], *container.get("args", [])]]
        spec = container_spec(
            self.pod,
            container,
            env=env,
            volume_dir=self._volume_dir,
            lab_root=self.lab.paths.root,
            node_root=self.lab.paths.node_dir(self.node.spec.name),
            volume_files=lambda vol: self.lab.volume_files(self.pod, self.node.spec, vol),
        )
        logdir = self.lab.paths.logs(self.namespace, self.name)
        logdir.mkdir(parents=True, exist_ok=True)
        self._append_log(name, f"--- container {name} starting: {' '.join(argv)}")
        # `ip netns exec` enters the netns and binds /etc/netns/<netns>/{hosts,resolv.conf} in a
        # new mount namespace; container_init builds the rest of the container's view there.
        with open(logdir / f"{name}.log", "ab") as logf:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", self.netns, *INIT, "run", json.dumps(spec), *argv,
                env=env, stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                cwd="/", start_new_session=True,
            )  # fmt: skip
        self.lab.ledger.process(proc.pid, role=f"container {self.key}/{name}")
        self.procs[name] = proc
        return proc

    @property
    def _node_netns_file(self) -> Path:
        return self.lab.paths.node_netns_dir(self.node.spec.name) / self.netns

    @property
    def _volume_dir(self) -> Path:
        return self.lab.paths.root / "volumes" / self.namespace / self.name

    def _append_log(self, container: str, line: str) -> None:
        logdir = self.lab.paths.logs(self.namespace, self.name)
        now = time.time()
        ms = int(now * 1000 % 1000)
        stamp = f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(now))}.{ms:03d}"
        try:
            with open(logdir / f"{container}.log", "a", encoding="utf-8") as f:
                f.write(f"{stamp} {line}\n")
        except OSError:
            pass  # the log is a record, not a reason to fail starting or stopping a container

    async def _probe_loop(self, container: dict[str, Any], probe: dict[str, Any]) -> None:
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        period = float(probe.get("periodSeconds", 10))
        failures_allowed = int(probe.get("failureThreshold", 3))
        failures = 0
        while True:
            proc = self.procs.get(container["name"])
            inits = children(proc.pid) if proc is not None else []
            ok = bool(inits or "exec" not in probe) and await run_probe(
                probe,
                container=container,
                node_netns=self.node.netns,
                pod_netns=self.netns,
                pod_ip=self.pod["status"]["podIP"],
                exec_in=[*INIT, "enter", str(inits[0])] if inits else None,
            )
            if ok:
                failures = 0
                self._set_ready(container["name"], True)
            else:
                failures += 1
                if failures >= failures_allowed:
                    self._set_ready(container["name"], False)
            # Until first ready, probe often: the kubelet would wait a whole period.
            ready = self.ready.get(container["name"])
            await asyncio.sleep(period if ready else min(period, 0.5))

    def _set_ready(self, container: str, ready: bool) -> None:
        if self.ready.get(container) == ready:
            return
        self.ready[container] = ready
        self._publish()

    def _set_status(self, **fields: Any) -> None:
        self.pod.setdefault("status", {}).update(fields)
        self.lab.on_change(self.pod)

    def _publish(self) -> None:
        all_ready = bool(self.ready) and all(self.ready.values())
        objects.set_ready(self.pod, all_ready)
        self.pod["status"]["containerStatuses"] = [
            {
                "name": c["name"],
                "ready": self.ready.get(c["name"], False),
                "restartCount": self.restarts.get(c["name"], 0),
                "started": c["name"] in self.procs and self.procs[c["name"]].returncode is None,
                "image": c.get("image", ""),
                # The PID of the container's wrapper: `lab exec` enters its child's namespaces.
                "containerID": f"lab://{self.procs[c['name']].pid}"
                if c["name"] in self.procs
                else "",
            }
            for c in self.pod["spec"]["containers"]
        ]
        self.lab.on_change(self.pod)

    async def stop(self) -> None:
        """Stop containers (preStop, SIGTERM, then SIGKILL after the grace period), then the
        sandbox."""
        # A preStop `sleep` (Kubernetes' sleep action) keeps the containers serving while the
        # pod's removal from its Services reaches every client, within the grace period.
        pause = max((_prestop_sleep(c) for c in self.pod["spec"]["containers"]), default=0.0)
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        running = [name for name, p in self.procs.items() if p.returncode is None]
        if pause > 0 and running:
            for name in running:
                self._append_log(name, f"--- pod deleted: preStop sleep {pause:g} s")
            await asyncio.sleep(min(pause, grace, GRACE_SECONDS))
        if self._task:
            await cancel_all([self._task, *self._children])
        await asyncio.gather(*(self._terminate(name, p) for name, p in self.procs.items()))
        await self._remove_sandbox()
        _keep_gone_logs(self.lab.paths, self.namespace, self.name)
        shutil.rmtree(self._volume_dir, ignore_errors=True)

    async def _terminate(self, name: str, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM to the entrypoint (through its wrapper), SIGKILL after the grace period; done
        when the entrypoint itself is gone, not only its wrapper."""
        if proc.returncode is not None:
            return
        grace = min(float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)), GRACE_SECONDS)
        inits = [(pid, process_start_time(pid)) for pid in children(proc.pid)]
        container = next(c for c in self.pod["spec"]["containers"] if c["name"] == name)
        stop = stop_signal(container)
        for sig, wait in ((stop, grace), (signal.SIGKILL, 5.0)):
            if sig != signal.SIGKILL:
                self._append_log(name, f"--- {sig.name} (grace {grace:g} s)")
            else:
                self._append_log(name, "--- SIGKILL: still running after the grace period")
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            if sig == signal.SIGKILL:
                signal_pids([pid for pid, _ in inits], sig)
            try:
                await asyncio.wait_for(proc.wait(), wait)
                break
            except TimeoutError:
                continue
        self._append_log(name, f"--- exited ({proc.returncode})")
        for _ in range(250):
            if not any(same_process(pid, start) for pid, start in inits):
                return
            await asyncio.sleep(0.02)


# The stop signal of the images the lab stands in for, as their Dockerfiles' STOPSIGNAL set it
# (a container runtime sends it instead of SIGTERM): haproxy's image soft-stops on SIGUSR1 (as
# PID 1 it has no SIGTERM handler, so SIGTERM would do nothing until SIGKILL), nginx's quits
# gracefully on SIGQUIT.
IMAGE_STOP_SIGNALS = {"haproxy": signal.SIGUSR1, "nginx": signal.SIGQUIT}


def stop_signal(container: dict[str, Any]) -> signal.Signals:
    """The signal that asks `container` to stop: its `lifecycle.stopSignal` (Kubernetes 1.33+),
    else its image's STOPSIGNAL where the lab knows the image, else SIGTERM."""
    named = (container.get("lifecycle") or {}).get("stopSignal")
    if isinstance(named, str) and named in signal.Signals.__members__:  # else refused at start
        return signal.Signals[named]
    image = str(container.get("image", ""))
    repository = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    return IMAGE_STOP_SIGNALS.get(repository, signal.SIGTERM)


def _prestop_sleep(container: dict[str, Any]) -> float:
    """Seconds of the container's `lifecycle.preStop.sleep` (0 without one)."""
    prestop = (container.get("lifecycle") or {}).get("preStop") or {}
    seconds = (prestop.get("sleep") or {}).get("seconds", 0)
    return float(seconds) if isinstance(seconds, int | float) and seconds > 0 else 0.0


GONE_LOGS_KEPT = 100


def _keep_gone_logs(paths: LabPaths, namespace: str, pod: str) -> None:
    """Moves a deleted pod's logs under `paths.gone_logs`, dropping the oldest beyond
    GONE_LOGS_KEPT pods (pod names are unique: a Deployment's next pod has a new one)."""
    src = paths.logs(namespace, pod)
    if not src.is_dir():
        return
    dest = paths.gone_logs / namespace / pod
    try:
        # Never made again under a lab directory `lab down` has removed meanwhile.
        paths.gone_logs.mkdir(exist_ok=True)
        dest.parent.mkdir(exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        src.rename(dest)
        kept = sorted(paths.gone_logs.glob("*/*"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-GONE_LOGS_KEPT]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        log.warning("keeping the logs of %s/%s failed: %s", namespace, pod, exc)
        shutil.rmtree(src, ignore_errors=True)
