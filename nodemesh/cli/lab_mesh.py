"""The mesh `nodemesh lab up` applies: the lab's own control plane and dashboard
(manifests/lab/nodemesh.yml: the rendered control plane reads the Kubernetes API, which the lab
does not have) and the node agent exactly as `nodemesh install` renders it (DaemonSet with agent
and install-cni, its ServiceAccount and RBAC), for the lab's namespace, cluster domain and trust
domain, with the install's ConfigMap holding the lab's trust anchor.

Images: the lab runs each container's command on this machine (its Python, this checkout's venv)
inside the container's own mount namespace, so image references are kept as rendered and not
pulled. Everything else of the rendered pod (securityContext, volumes, env, probes, update
strategy, grace period) is what the lab runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from nodemesh import ports
from nodemesh.cli.install import addons
from nodemesh.cli.install import agent as agent_install
from nodemesh.cli.install import ingress as ingress_install
from nodemesh.cli.install.values import InstallValues
from nodemesh.identity import DEFAULT_TRUST_DOMAIN
from nodemesh.lab.network import CLUSTER_DOMAIN
from nodemesh.lab.paths import LabPaths

REPO = Path(__file__).resolve().parents[2]
MESH_MANIFEST = REPO / "manifests" / "lab" / "nodemesh.yml"
PROMETHEUS_MANIFEST = REPO / "manifests" / "lab" / "prometheus.yml"
LAB_VALUES = InstallValues(
    namespace="nodemesh", cluster_domain=CLUSTER_DOMAIN, trust_domain=DEFAULT_TRUST_DOMAIN
)
Obj = dict[str, Any]


def agent_container(daemonset: Obj) -> Obj:
    return next(
        c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"
    )


def mesh_objects(
    paths: LabPaths,
    agent_args: Sequence[str] = (),
    *,
    change_daemonset: Callable[[Obj], None] | None = None,
    anchor: bytes | None = None,
    controlplane_replicas: int = 1,
    prometheus: bool = False,
    ingress: bool = False,
) -> list[Obj]:
    """`change_daemonset` edits the rendered DaemonSet in place (tests: a fix taken out);
    `anchor`: the trust anchor (default: the lab's); `controlplane_replicas`: 3 for `--ha`;
    `prometheus`: Debian's Prometheus as a pod, and the control plane answering from it;
    `ingress`: nodemesh-ingress as `install --ingress` renders it (see `lab_ingress`)."""
    lab_part = MESH_MANIFEST.read_text()
    if prometheus:
        lab_part += "---\n" + PROMETHEUS_MANIFEST.read_text()
    lab_part = lab_part.replace("__LAB_ROOT__", str(paths.root))
    docs = [d for d in yaml.safe_load_all(lab_part) if d]
    for doc in docs:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "nodemesh-controlplane":
            doc["spec"]["replicas"] = controlplane_replicas
            if prometheus:
                url = f"http://nodemesh-prometheus.nodemesh.svc.cluster.local:{ports.PROMETHEUS}"
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    container["args"] = [*container.get("args", []), f"--prometheus-url={url}"]
    if anchor is None:
        anchor = (paths.identity / "ca.crt").read_bytes()
    rendered = agent_install.objects(LAB_VALUES)
    for obj in rendered:
        if obj["kind"] == "DaemonSet":
            agent = agent_container(obj)
            agent["args"] = [*agent["args"], *agent_args]
            if change_daemonset is not None:
                change_daemonset(obj)
    extra = lab_ingress(paths) if ingress else []
    return [*docs, addons.config_map(LAB_VALUES, anchor), *rendered, *extra]


def lab_ingress(paths: LabPaths) -> list[Obj]:
    """nodemesh-ingress exactly as `install --ingress` renders it, but for what the lab lacks: it
    reads the lab's object store (read-only) instead of the API server's lists and watches, and
    its Service is a ClusterIP (the lab has no load balancer; `lab up` forwards local ports), and
    it has no PodDisruptionBudget (nothing evicts pods in the lab)."""
    objs = [o for o in ingress_install.objects(LAB_VALUES) if o["kind"] != "PodDisruptionBudget"]
    objects_dir = str(paths.root / "objects")
    for obj in objs:
        if obj["kind"] == "Service":
            obj["spec"]["type"] = "ClusterIP"
            obj["spec"].pop("externalTrafficPolicy", None)
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["spec"]
            c = pod["containers"][0]
            c["args"] = ["--source=lab" if a == "--source=kubernetes" else a for a in c["args"]] + [
                f"--state-dir={objects_dir}"
            ]
            c["volumeMounts"].append(
                {"name": "objects", "mountPath": objects_dir, "readOnly": True}
            )
            pod["volumes"].append(
                {"name": "objects", "hostPath": {"path": objects_dir, "type": "DirectoryOrCreate"}}
            )
    return objs


def mesh_manifest(
    paths: LabPaths,
    agent_args: Sequence[str] = (),
    *,
    change_daemonset: Callable[[Obj], None] | None = None,
    anchor: bytes | None = None,
    controlplane_replicas: int = 1,
    prometheus: bool = False,
    ingress: bool = False,
) -> str:
    objs = mesh_objects(
        paths,
        agent_args,
        change_daemonset=change_daemonset,
        anchor=anchor,
        controlplane_replicas=controlplane_replicas,
        prometheus=prometheus,
        ingress=ingress,
    )
    return yaml.safe_dump_all(objs, sort_keys=False)
