"""The lab supervisor: one long-lived process per lab that plays the API server, the controllers,
the kubelets and kube-proxy. It builds the network, serves a small JSON API on a unix socket
(apply, delete, status, shutdown), reconciles Deployments/DaemonSets into Pods, runs the pods,
keeps EndpointSlices, Service rules and hosts files current, and serves localhost port-forwards.

Run as `python -m nodemesh.lab.supervisor --name LAB` by `nodemesh lab up`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import random
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nodemesh.lab import objects, rollout, volumes
from nodemesh.lab.apiserver import PORT as API_PORT
from nodemesh.lab.apiserver import ApiServer
from nodemesh.lab.cni import CniRunner
from nodemesh.lab.config import LabConfig
from nodemesh.lab.forward import Forwarder
from nodemesh.lab.ledger import Ledger
from nodemesh.lab.manifests import (
    CLUSTER_SCOPED,
    Manifest,
    ManifestError,
    ObjectRef,
    check_references,
    ref_of,
    selects,
)
from nodemesh.lab.network import (
    APISERVER_IP,
    NODE_IPAM_DIR,
    Network,
    NodeSpec,
    bridge_conflist,
    render_hosts,
    render_resolv,
    render_service_rules,
    service_routes,
)
from nodemesh.lab.network import run as run_cmd
from nodemesh.lab.paths import ETC_NETNS, LabPaths
from nodemesh.lab.pods import LabContext, NodeContext, PodRunner
from nodemesh.lab.store import Store
from nodemesh.netns import socket_in_netns
from nodemesh.tasks import cancel_all, spawn

log = logging.getLogger("nodemesh.lab.supervisor")

BASE_NAMESPACES = ("default", "kube-system", "nodemesh")
CNI_PATH = ("/usr/lib/cni", "/opt/cni/bin")


class RolloutError(Exception):
    """A rollout request naming something the lab cannot roll."""


class Supervisor:
    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.paths = LabPaths(config.name)
        self.ledger = Ledger(self.paths.ledger)
        self.store = Store(self.paths.objects)
        self.nodes = [NodeSpec(i) for i in range(1, config.nodes + 1)]
        self.network = Network(self.paths, self.ledger, self.nodes)
        self.runners: dict[ObjectRef, PodRunner] = {}
        self.rng = random.Random()
        self._dirty = asyncio.Event()
        self._reconciler: asyncio.Task[None] | None = None
        self._terminating: set[asyncio.Task[None]] = set()  # pods in their grace period
        self._stopping_refs: set[ObjectRef] = set()
        self._changes = 0  # bumped by every change; the reconciler records what it has seen
        self._reconciled = 0
        self._stopping = asyncio.Event()
        self._last_rules: dict[str, str] = {}
        self._last_services: list[Any] = []
        self.forwarder = Forwarder(self)
        venv_bin = str(Path(sys.executable).parent)
        self.lab = LabContext(
            paths=self.paths,
            ledger=self.ledger,
            nodes={},
            env_path=f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            on_change=self._pod_changed,
            services=lambda: self.store.of_kind("Service"),
            volume_files=self._volume_files,
            api_env={
                "KUBERNETES_SERVICE_HOST": APISERVER_IP,
                "KUBERNETES_SERVICE_PORT": str(API_PORT),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(API_PORT),
            },
        )
        self.api = ApiServer(self.store, directory=self.paths.root / "apiserver", ip=APISERVER_IP)

    # ----- start-up --------------------------------------------------------------------------

    async def start(self) -> None:
        await self.network.build()
        for node in self.nodes:
            await self._make_node_root(node)
            conf_dir = self.paths.cni_conf_dir(node.name)
            conflist = bridge_conflist(node, ipam_dir=NODE_IPAM_DIR)
            (conf_dir / "10-lab-bridge.conflist").write_text(json.dumps(conflist, indent=2))
            netns = self.paths.node_netns(node.name)
            self.lab.nodes[node.name] = NodeContext(
                spec=node,
                netns=netns,
                conf_dir=conf_dir,
                cni=CniRunner(
                    node_netns_path=f"/run/netns/{netns}",
                    cni_path=[str(self.paths.cni_bin_dir(node.name)), *CNI_PATH],
                    node_root=str(self.paths.node_dir(node.name)),
                ),
            )
            self.store.put(self._node_object(node))
            etc = ETC_NETNS / netns
            self.ledger.path_created(etc)
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "resolv.conf").write_text(render_resolv("default"))
        self._write_node_hosts([])
        for ns in BASE_NAMESPACES:
            self.store.put(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(ns, namespace=None)}
            )
        await self.forwarder.start(self.config.forwards)
        await self.api.start(lambda: socket_in_netns(self.paths.underlay_netns))
        self._reconciler = spawn(self._reconcile_loop(), name="reconcile")

    async def _make_node_root(self, node: NodeSpec) -> None:
        """The node's own root filesystem, for the paths a node's pods and CNI plugins use:
        etc/cni/net.d, opt/cni/bin, run (= var/run) with run/netns shared like a node's (pods'
        netns appear in it, also inside containers that mounted it), var/log."""
        paths = self.paths
        for d in (
            paths.cni_conf_dir(node.name),
            paths.cni_bin_dir(node.name),
            paths.node_netns_dir(node.name),
            paths.node_log_dir(node.name),
        ):
            d.mkdir(parents=True, exist_ok=True)
        (paths.node_dir(node.name) / "var" / "run").symlink_to("../run")
        netns_dir = str(paths.node_netns_dir(node.name))
        await run_cmd("mount", "--bind", netns_dir, netns_dir)
        await run_cmd("mount", "--make-shared", netns_dir)

    def _volume_files(
        self, pod: dict[str, Any], node: NodeSpec, vol: dict[str, Any]
    ) -> dict[str, tuple[bytes, int]]:
        return volumes.volume_files(
            pod, vol, get=self._object_for_volume, token=lambda ns, sa, aud, _pod: (
                self._token(ns, sa, aud, node)
            ),
        )  # fmt: skip

    def _object_for_volume(self, ref: ObjectRef) -> dict[str, Any] | None:
        if ref.kind == "ConfigMap" and ref.name == "kube-root-ca.crt":
            # As kube-controller-manager publishes it in every namespace.
            return {"data": {"ca.crt": self.api.ca_pem.decode()}}
        return self.store.get(ref)

    def _token(self, namespace: str, account: str, audience: str, node: NodeSpec) -> str:
        """A projected service-account token. For audience nodemesh (the node agent's, which the
        lab's control plane checks against its own table) the node's agent token; any other:
        one the lab's API server stand-in issues for the ServiceAccount."""
        if audience == "nodemesh":
            return (self.paths.agent_credentials(node.name) / "token").read_text().strip()
        return self.api.issue_token(namespace, account)

    def _desired(self, workload: dict[str, Any]) -> int:
        if workload["kind"] == "Deployment":
            return int(workload["spec"].get("replicas", 1))
        selector = workload["spec"]["template"]["spec"].get("nodeSelector") or {}
        return sum(
            1 for n in self.nodes if selects(selector, self._node_object(n)["metadata"]["labels"])
        )

    def _node_object(self, node: NodeSpec) -> dict[str, Any]:
        labels = {
            "kubernetes.io/hostname": node.name,
            "kubernetes.io/os": "linux",
            "lab.nodemesh.io/lab": self.config.name,
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {**_meta(node.name, namespace=None), "labels": labels},
            "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": node.ip},
                    {"type": "Hostname", "address": node.name},
                ],
                "conditions": [{"type": "Ready", "status": "True"}],
                "nodeInfo": {"kubeletVersion": "v1.29.0-lab", "operatingSystem": "linux"},
            },
        }

    # ----- API ---------------------------------------------------------------------------------

    async def apply(self, docs: list[dict[str, Any]], source: str) -> list[str]:
        manifests = [Manifest(d["obj"], source, d["index"]) for d in docs]
        check_references(
            manifests,
            existing=self.store.all(),
            which=lambda exe: _which(exe, self.lab.env_path),
        )
        results = []
        for m in manifests:
            obj = copy.deepcopy(m.obj)
            ref = m.ref
            if ref.kind not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = ref.namespace
            old = self.store.get(ref)
            meta = obj["metadata"]
            meta["uid"] = old["metadata"]["uid"] if old else objects.new_uid()
            meta["creationTimestamp"] = (
                old["metadata"]["creationTimestamp"] if old else objects.now()
            )
            meta.setdefault("generation", 1)
            if ref.kind == "Service":
                spec = obj["spec"]
                if old and old["spec"].get("clusterIP"):
                    spec["clusterIP"] = old["spec"]["clusterIP"]
                elif spec.get("clusterIP") not in (None, "", "None"):
                    pass  # honour a requested ClusterIP
                elif spec.get("clusterIP") != "None":
                    used = [s["spec"].get("clusterIP", "") for s in self.store.of_kind("Service")]
                    spec["clusterIP"] = objects.allocate_cluster_ip(used)
                spec["clusterIPs"] = [spec["clusterIP"]]
                spec.setdefault("type", "ClusterIP")
            if ref.kind == "Pod":
                if old:
                    results.append(f"{ref} unchanged")
                    continue
                obj["spec"].setdefault("serviceAccountName", "default")
                obj["status"] = {"phase": "Pending"}
            self.store.put(obj)
            results.append(f"{ref} {'configured' if old else 'created'}")
        self._mark_dirty()
        await self.settle()
        return results

    async def delete(self, refs: list[dict[str, str]]) -> list[str]:
        results = []
        for r in refs:
            ref = ObjectRef(r["kind"], r.get("namespace", ""), r["name"])
            if self.store.get(ref) is None:
                results.append(f"{ref} not found")
                continue
            if ref.kind == "Namespace":
                for obj in list(self.store.all()):
                    oref = ref_of(obj)
                    if oref.namespace == ref.name:
                        self._delete(oref)
            self._delete(ref)
            results.append(f"{ref} deleted")
        self._mark_dirty()
        await self.settle()
        return results

    def _mark_dirty(self) -> None:
        self._changes += 1
        self._dirty.set()

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until the reconciler has acted on every change made before this call."""
        target = self._changes
        deadline = asyncio.get_running_loop().time() + timeout
        while self._reconciled < target and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "pid": os.getpid(),
            "nodes": [{"name": n.name, "ip": n.ip, "podCIDR": n.pod_cidr} for n in self.nodes],
            "pods": [
                {
                    "namespace": p["metadata"]["namespace"],
                    "name": p["metadata"]["name"],
                    "node": p["spec"].get("nodeName", ""),
                    "ip": p.get("status", {}).get("podIP", ""),
                    "phase": p.get("status", {}).get("phase", ""),
                    "ready": objects.is_ready(p),
                    "restarts": sum(
                        c.get("restartCount", 0)
                        for c in p.get("status", {}).get("containerStatuses") or []
                    ),
                    "message": p.get("status", {}).get("message", ""),
                }
                for p in self._live_pods()
            ],
            "services": [
                {
                    "namespace": s["metadata"]["namespace"],
                    "name": s["metadata"]["name"],
                    "clusterIP": s["spec"].get("clusterIP"),
                    "ports": [p["port"] for p in s["spec"]["ports"]],
                }
                for s in self.store.of_kind("Service")
            ],
            "forwards": self.forwarder.describe(),
            "workloads": [
                {
                    "kind": w["kind"],
                    "namespace": w["metadata"]["namespace"],
                    "name": w["metadata"]["name"],
                    "desired": self._desired(w),
                    "ready": sum(
                        1
                        for p in self._live_pods()
                        if _owned_by(p, w, self.store) and objects.is_ready(p)
                    ),
                }
                for w in [*self.store.of_kind("Deployment"), *self.store.of_kind("DaemonSet")]
            ],
        }

    # ----- controllers -------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while not self._stopping.is_set():
            await self._dirty.wait()
            await asyncio.sleep(0.02)  # batch bursts of changes
            self._dirty.clear()
            seen = self._changes
            try:
                await self._reconcile()
                self._reconciled = seen
            except Exception:
                log.exception("reconcile failed")
                await asyncio.sleep(1)
                self._dirty.set()

    async def _reconcile(self) -> None:
        self._reconcile_deployments()
        self._reconcile_daemonsets()
        # Endpoints first: a deleted pod leaves its Service at once, while its containers still
        # get their grace period (as the endpoint-slice controller marks it terminating).
        await self._reconcile_endpoints()
        await self._reconcile_pods()

    def _reconcile_deployments(self) -> None:
        deployments = {ref_of(d): d for d in self.store.of_kind("Deployment")}
        for rs in self.store.of_kind("ReplicaSet"):
            owner = _owner(rs)
            dep = next((d for d in deployments.values() if d["metadata"]["uid"] == owner), None)
            wanted = objects.replicaset_for(dep)["metadata"]["name"] if dep else None
            if rs["metadata"]["name"] != wanted and (dep is None or self._rolled_out(dep)):
                self.store.delete(ref_of(rs))  # its pods go with it below
        for dep in deployments.values():
            want = objects.replicaset_for(dep)
            rs_ref = ref_of(want)
            found = self.store.get(rs_ref)
            replicas = dep["spec"].get("replicas", 1)
            if found is None:
                rs = want
            elif found["spec"]["replicas"] == replicas:
                self._update_rs_status(found, dep)
                continue
            else:
                rs = found
            rs["spec"]["replicas"] = replicas
            self.store.put(rs)
            self._update_rs_status(rs, dep)
        for rs in self.store.of_kind("ReplicaSet"):
            pods = [
                p
                for p in self._live_pods(rs["metadata"]["namespace"])
                if _owner(p) == rs["metadata"]["uid"]
            ]
            missing = rs["spec"]["replicas"] - len(pods)
            for _ in range(missing):
                name = f"{rs['metadata']['name']}-{objects.random_suffix(self.rng)}"
                self.store.put(objects.pod_from_template(rs, name=name))
            if missing < 0:
                # Scale down the newest pods first, not-ready ones before ready ones.
                victims = sorted(
                    pods,
                    key=lambda p: (objects.is_ready(p), p["metadata"]["creationTimestamp"]),
                )
                for p in victims[:-missing]:
                    self._delete_pod(p)
        rs_uids = {rs["metadata"]["uid"] for rs in self.store.of_kind("ReplicaSet")}
        for p in self._live_pods():
            if _owner_kind(p) == "ReplicaSet" and _owner(p) not in rs_uids:
                self._delete_pod(p)

    def _rolled_out(self, dep: dict[str, Any]) -> bool:
        """Whether a Deployment's old ReplicaSets may go: at once with `strategy.type: Recreate`,
        else (RollingUpdate, the default) once the new one has all its replicas ready, so a
        template change never leaves the Deployment without a ready pod (a surge of up to the
        whole replica count, with none unavailable)."""
        if (dep["spec"].get("strategy") or {}).get("type") == "Recreate":
            return True
        rs = self.store.get(ref_of(objects.replicaset_for(dep)))
        if rs is None:
            return False
        pods = [
            p
            for p in self._live_pods(rs["metadata"]["namespace"])
            if _owner(p) == rs["metadata"]["uid"]
        ]
        return sum(1 for p in pods if objects.is_ready(p)) >= dep["spec"].get("replicas", 1)

    def _update_rs_status(self, rs: dict[str, Any], dep: dict[str, Any]) -> None:
        pods = [
            p
            for p in self._live_pods(rs["metadata"]["namespace"])
            if _owner(p) == rs["metadata"]["uid"]
        ]
        ready = sum(1 for p in pods if objects.is_ready(p))
        status = {"replicas": len(pods), "readyReplicas": ready, "availableReplicas": ready}
        if rs.get("status") != status:
            rs["status"] = status
            self.store.put(rs)
        dstatus = {**status, "updatedReplicas": len(pods), "observedGeneration": 1}
        if dep.get("status") != dstatus:
            dep["status"] = dstatus
            self.store.put(dep)

    def _reconcile_daemonsets(self) -> None:
        sets = self.store.of_kind("DaemonSet")
        uids = {d["metadata"]["uid"] for d in sets}
        for ds in sets:
            revision = objects.template_hash(ds["spec"]["template"])
            selector = ds["spec"]["template"]["spec"].get("nodeSelector") or {}
            nodes = [
                n.name
                for n in self.nodes
                if selects(selector, self._node_object(n)["metadata"]["labels"])
            ]
            pods = [p for p in self._live_pods() if _owner(p) == ds["metadata"]["uid"]]
            decided = rollout.plan(
                revision=revision,
                nodes=nodes,
                pods=[_ds_pod(p) for p in pods],
                strategy=rollout.strategy_of(ds, len(nodes)),
            )
            for name in decided.delete:
                self._delete(ObjectRef("Pod", ds["metadata"]["namespace"], name))
            for node_name in decided.create:
                name = f"{ds['metadata']['name']}-{objects.random_suffix(self.rng)}"
                pod = objects.pod_from_template(ds, name=name, node=node_name)
                pod["metadata"]["labels"][rollout.REVISION_LABEL] = revision
                self.store.put(pod)
            if decided.delete or decided.create:
                self._mark_dirty()  # the next step of a rollout may follow at once
        for p in self._live_pods():
            if _owner_kind(p) == "DaemonSet" and _owner(p) not in uids:
                self._delete_pod(p)

    async def _reconcile_pods(self) -> None:
        everything = {ref_of(p): p for p in self.store.of_kind("Pod")}
        pods = {ref: p for ref, p in everything.items() if not _terminating(p)}
        for ref in [ref for ref in self.runners if ref not in pods]:
            runner = self.runners.pop(ref)
            self._stopping_refs.add(ref)
            task = spawn(self._stop_pod(ref, runner), name=f"stop pod {runner.key}")
            self._terminating.add(task)
            task.add_done_callback(self._terminating.discard)
        for ref, pod in everything.items():
            if _terminating(pod) and ref not in self.runners and ref not in self._stopping_refs:
                self.store.delete(ref)  # never started, or its runner is gone
        node_infos = [
            objects.NodeInfo(n.name, self._node_object(n)["metadata"]["labels"]) for n in self.nodes
        ]
        for ref, pod in pods.items():
            if ref in self.runners:
                continue
            if not pod["spec"].get("nodeName"):
                try:
                    pod["spec"]["nodeName"] = objects.schedule(
                        pod, nodes=node_infos, pods=pods.values()
                    )
                except objects.SchedulingError as e:
                    pod["status"] = {
                        "phase": "Pending",
                        "reason": "Unschedulable",
                        "message": str(e),
                    }
                    self.store.put(pod)
                    continue
                self.store.put(pod)
            runner = PodRunner(pod, lab=self.lab)
            self.runners[ref] = runner
            runner.start()

    async def _stop_pod(self, ref: ObjectRef, runner: PodRunner) -> None:
        """Stop a deleted pod's containers, then remove its object: until then it stays, marked
        terminating, as the API server keeps a pod until its kubelet has stopped it (so the
        mesh still knows the identity of a pod serving its grace period)."""
        try:
            await runner.stop()
        finally:
            self._stopping_refs.discard(ref)
            obj = self.store.get(ref)
            if obj is not None and _terminating(obj):
                self.store.delete(ref)
                self._mark_dirty()

    def _live_pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return [p for p in self.store.of_kind("Pod", namespace) if not _terminating(p)]

    def _delete_pod(self, pod: dict[str, Any]) -> None:
        """Mark a pod terminating (deletionTimestamp, not ready): it leaves its Services at once;
        its object goes once its containers have stopped."""
        if _terminating(pod):
            return
        pod["metadata"]["deletionTimestamp"] = objects.now()
        objects.set_ready(pod, False)
        self.store.put(pod)

    def _delete(self, ref: ObjectRef) -> None:
        obj = self.store.get(ref)
        if obj is None:
            return
        if ref.kind == "Pod":
            self._delete_pod(obj)
        else:
            self.store.delete(ref)

    def rollout_restart(self, namespace: str, name: str) -> str:
        """`kubectl rollout restart ds/NAME`: a new template revision, rolled by the strategy."""
        ds = self._daemonset(namespace, name)
        meta = ds["spec"]["template"].setdefault("metadata", {})
        # Finer than kubectl's seconds: two restarts in one second are still two.
        restarted = datetime.now(UTC).isoformat(timespec="microseconds")
        meta.setdefault("annotations", {})[rollout.RESTARTED_AT] = restarted
        self.store.put(ds)
        self._mark_dirty()
        return f"daemonset.apps/{name} restarted"

    def rollout_status(self, namespace: str, name: str) -> dict[str, Any]:
        ds = self._daemonset(namespace, name)
        revision = objects.template_hash(ds["spec"]["template"])
        pods = [p for p in self._live_pods() if _owner(p) == ds["metadata"]["uid"]]
        updated = [p for p in pods if _ds_pod(p).revision == revision]
        desired = self._desired(ds)
        ready = sum(1 for p in updated if objects.is_ready(p))
        return {
            "desired": desired,
            "updated": len(updated),
            "ready": ready,
            "old": len(pods) - len(updated),
            "done": len(updated) == desired == ready and len(pods) == desired,
        }

    def _daemonset(self, namespace: str, name: str) -> dict[str, Any]:
        ds = self.store.get(ObjectRef("DaemonSet", namespace, name))
        if ds is None:
            raise RolloutError(f"daemonset {namespace}/{name} not found")
        return ds

    def _pod_changed(self, pod: dict[str, Any]) -> None:
        ref = ref_of(pod)
        if ref in self.runners and self.store.get(ref) is pod:
            self.store.put(pod)
            self._mark_dirty()

    async def _reconcile_endpoints(self) -> None:
        services = self.store.of_kind("Service")
        pods = self.store.of_kind("Pod")
        wanted: dict[ObjectRef, dict[str, Any]] = {}
        for svc in services:
            name = f"{svc['metadata']['name']}-{svc['metadata']['uid'][:5]}"
            es = objects.endpointslice_for(svc, pods, name=name)
            wanted[ref_of(es)] = es
        for es in self.store.of_kind("EndpointSlice"):
            ref = ref_of(es)
            if ref not in wanted:
                self.store.delete(ref)
        for ref, es in wanted.items():
            old = self.store.get(ref)
            if old and _same_slice(old, es):
                continue
            if old:
                es["metadata"]["uid"] = old["metadata"]["uid"]
            self.store.put(es)
        rules = render_service_rules(service_routes(services, wanted.values()))
        for node in self.nodes:
            if self._last_rules.get(node.name) != rules:
                await self.network.iptables_restore(node, rules)
                self._last_rules[node.name] = rules
        svc_view = [
            (s["metadata"]["namespace"], s["metadata"]["name"], s["spec"].get("clusterIP"))
            for s in services
        ]
        if svc_view != self._last_services:
            self._last_services = svc_view
            for runner in self.runners.values():
                runner.write_hosts()
            self._write_node_hosts(services)

    def _write_node_hosts(self, services: list[dict[str, Any]]) -> None:
        """Node namespaces resolve Service names too (for hostNetwork pods such as agents)."""
        for node in self.nodes:
            text = render_hosts(
                pod_ip=node.ip, pod_name=node.name, namespace="default", services=services
            )
            # In place, like the pods' files: running processes see it through a bind mount.
            with open(ETC_NETNS / self.paths.node_netns(node.name) / "hosts", "w") as f:
                f.write(text)

    # ----- shutdown ----------------------------------------------------------------------------

    async def shutdown(self) -> None:
        self._stopping.set()
        if self._reconciler is not None:
            await cancel_all([self._reconciler])
        await self.forwarder.stop()
        await self.api.stop()
        await asyncio.gather(
            *(r.stop() for r in self.runners.values()), *self._terminating, return_exceptions=True
        )
        self.runners.clear()


def _terminating(pod: dict[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def _owned_by(pod: dict[str, Any], workload: dict[str, Any], store: Store) -> bool:
    owner = _owner(pod)
    if owner == workload["metadata"]["uid"]:
        return True
    return any(
        rs["metadata"]["uid"] == owner and _owner(rs) == workload["metadata"]["uid"]
        for rs in store.of_kind("ReplicaSet", workload["metadata"]["namespace"])
    )


def _which(exe: str, path: str) -> str | None:
    import shutil

    if "/" in exe:
        return exe if os.access(exe, os.X_OK) else None
    return shutil.which(exe, path=path)


def _meta(name: str, *, namespace: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "uid": objects.new_uid(),
        "creationTimestamp": objects.now(),
    }
    if namespace:
        meta["namespace"] = namespace
    return meta


def _ds_pod(pod: dict[str, Any]) -> rollout.DsPod:
    meta = pod["metadata"]
    return rollout.DsPod(
        name=meta["name"],
        node=pod["spec"].get("nodeName", ""),
        revision=(meta.get("labels") or {}).get(rollout.REVISION_LABEL, ""),
        ready=objects.is_ready(pod),
        created=meta.get("creationTimestamp", ""),
    )


def _owner(obj: dict[str, Any]) -> str | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return refs[0]["uid"] if refs else None


def _owner_kind(obj: dict[str, Any]) -> str | None:
    refs = obj["metadata"].get("ownerReferences") or []
    return refs[0]["kind"] if refs else None


def _same_slice(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["endpoints"] == b["endpoints"] and a["ports"] == b["ports"])


# ----- the process ---------------------------------------------------------------------------


async def serve(config: LabConfig) -> int:
    sup = Supervisor(config)
    paths = sup.paths
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            req = json.loads(line)
            op = req.get("op")
            if op == "apply":
                reply: dict[str, Any] = {
                    "ok": True,
                    "results": await sup.apply(req["docs"], req["source"]),
                }
            elif op == "delete":
                reply = {"ok": True, "results": await sup.delete(req["refs"])}
            elif op == "status":
                reply = {"ok": True, "status": sup.status()}
            elif op == "rollout":
                if req["kind"] != "DaemonSet":
                    raise RolloutError(f"the lab rolls DaemonSets only, not {req['kind']}")
                ns, name = req["namespace"], req["name"]
                if req["action"] == "restart":
                    reply = {"ok": True, "result": sup.rollout_restart(ns, name)}
                else:
                    reply = {"ok": True, "status": sup.rollout_status(ns, name)}
            elif op == "shutdown":
                stop.set()
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": f"unknown operation {op!r}"}
        except (ManifestError, RolloutError) as e:
            reply = {"ok": False, "error": str(e)}
        except (ValueError, KeyError, TypeError) as e:
            reply = {"ok": False, "error": f"bad request: {e}"}
        writer.write(json.dumps(reply).encode() + b"\n")
        try:
            await writer.drain()
        finally:
            writer.close()

    try:
        await sup.start()
    except Exception as e:
        log.exception("lab start failed")
        _write_state(paths, {"state": "failed", "error": str(e)})
        await sup.shutdown()
        return 1
    server = await asyncio.start_unix_server(handle, path=str(paths.socket))
    os.chmod(paths.socket, 0o600)
    _write_state(paths, {"state": "running", "pid": os.getpid()})
    log.info("lab %s is up", config.name)
    await stop.wait()
    log.info("lab %s shutting down", config.name)
    server.close()
    await sup.shutdown()
    _write_state(paths, {"state": "stopped"})
    return 0


def _write_state(paths: LabPaths, state: dict[str, Any]) -> None:
    tmp = paths.root / ".state.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, paths.root / "state.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodemesh-lab-supervisor")
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = LabConfig.load(LabPaths(args.name).config)
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
