"""The Namespace, the shared ConfigMap, the dashboard and the optional Prometheus."""

from __future__ import annotations

import json

import yaml

from nodemesh import ports
from nodemesh.cli.install.meta import (
    Obj,
    http_probe,
    labels,
    locked_down,
    metadata,
    pdb,
    selector,
    service_account,
    spread,
)
from nodemesh.cli.install.values import InstallValues

DASHBOARD_TOKEN_DIR = "/var/run/secrets/nodemesh.io/serviceaccount"
PROMETHEUS_IMAGE = "prom/prometheus:v2.53.0"


def namespace(values: InstallValues) -> Obj:
    meta = metadata(values, "controlplane", values.namespace, namespaced=False)
    meta["labels"] = {
        "app.kubernetes.io/part-of": "nodemesh",
        "nodemesh.io/control-plane-ns": values.namespace,
        # The agent needs hostNetwork, host paths and NET_ADMIN/NET_RAW/SYS_ADMIN, which the
        # baseline Pod Security level forbids; every other pod here is locked down anyway.
        "pod-security.kubernetes.io/enforce": "privileged",
    }
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def config_map(values: InstallValues, trust_anchors: bytes) -> Obj:
    """The install's settings (read back by `check` and `uninstall`) and the public trust anchors
    the agents mount: the anchors are not secret, the issuer key stays in the Secret."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(values, "controlplane", "nodemesh-config"),
        "data": {
            "ca.crt": trust_anchors.decode("ascii"),
            "install.json": json.dumps(values.to_dict(), indent=2, sort_keys=True) + "\n",
        },
    }


def dashboard(values: InstallValues) -> list[Obj]:
    replicas = values.web_replicas
    spec: Obj = {
        "serviceAccountName": "nodemesh-dashboard",
        "automountServiceAccountToken": False,
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "containers": [
            {
                "name": "dashboard",
                "image": values.image("dashboard"),
                "imagePullPolicy": values.image_pull_policy,
                "command": ["nodemesh-dashboard"],
                "args": [
                    f"--public-api={values.controlplane_host()}:{ports.PUBLIC_API}",
                    f"--addr=0.0.0.0:{ports.DASHBOARD}",
                    f"--token-file={DASHBOARD_TOKEN_DIR}/token",
                ],
                "ports": [{"name": "http", "containerPort": ports.DASHBOARD}],
                "readinessProbe": http_probe("/healthz", ports.DASHBOARD, period=5),
                "livenessProbe": http_probe("/healthz", ports.DASHBOARD, period=10),
                "resources": {
                    "requests": {"cpu": "50m", "memory": "64Mi"},
                    "limits": {"memory": "256Mi"},
                },
                "securityContext": locked_down(),
                "volumeMounts": [
                    {"name": "tmp", "mountPath": "/tmp"},
                    {
                        "name": "public-api-token",
                        "mountPath": DASHBOARD_TOKEN_DIR,
                        "readOnly": True,
                    },
                ],
            }
        ],
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
            # Its own ServiceAccount's token, for the public API only (no automounted one).
            {
                "name": "public-api-token",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}
                    ]
                },
            },
        ],
    }
    if replicas > 1:
        spec["affinity"] = spread("dashboard")
    return [
        service_account(values, "dashboard", automount=False),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(values, "dashboard", "nodemesh-dashboard"),
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": selector("dashboard")},
                "template": {"metadata": {"labels": labels(values, "dashboard")}, "spec": spec},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(values, "dashboard", "nodemesh-dashboard"),
            "spec": {
                "type": "ClusterIP",
                "selector": selector("dashboard"),
                "ports": [{"name": "http", "port": ports.DASHBOARD, "targetPort": ports.DASHBOARD}],
            },
        },
        pdb(values, "dashboard", replicas=replicas),
    ]


def _scrape_config(values: InstallValues) -> str:
    def job(name: str, component: str, port: str, pod_label: str, port_number: int) -> Obj:
        return {
            "job_name": name,
            "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [values.namespace]}}],
            "relabel_configs": [
                {
                    "source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"],
                    "regex": f"nodemesh-{component}",
                    "action": "keep",
                },
                {
                    "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                    "regex": port,
                    "action": "keep",
                },
                {
                    "source_labels": ["__meta_kubernetes_pod_container_port_number"],
                    "regex": str(port_number),
                    "action": "keep",
                },
                {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
                # The agent labels its series with the meshed pods' pod/namespace (Linkerd's
                # names); its own pod name must not take `pod`, or Prometheus would rename
                # theirs to exported_pod.
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": pod_label},
            ],
        }

    config = {
        "global": {"scrape_interval": "10s", "evaluation_interval": "10s"},
        "scrape_configs": [
            job("nodemesh-controlplane", "controlplane", "admin", "pod", ports.CONTROLPLANE_ADMIN),
            job("nodemesh-agent", "agent", "admin", "agent_pod", ports.AGENT_ADMIN),
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def prometheus(values: InstallValues) -> list[Obj]:
    name = "nodemesh-prometheus"
    cluster_name = f"{values.namespace}-prometheus"
    return [
        service_account(values, "prometheus", automount=True),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": metadata(values, "prometheus", cluster_name, namespaced=False),
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": metadata(values, "prometheus", cluster_name, namespaced=False),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": values.namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(values, "prometheus", f"{name}-config"),
            "data": {"prometheus.yml": _scrape_config(values)},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(values, "prometheus", name),
            "spec": {
                "replicas": values.prometheus_replicas,
                "selector": {"matchLabels": selector("prometheus")},
                "template": {
                    "metadata": {"labels": labels(values, "prometheus")},
                    "spec": {
                        "serviceAccountName": name,
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "containers": [
                            {
                                "name": "prometheus",
                                "image": PROMETHEUS_IMAGE,
                                "imagePullPolicy": values.image_pull_policy,
                                "args": [
                                    "--config.file=/etc/prometheus/prometheus.yml",
                                    "--storage.tsdb.path=/data",
                                    "--storage.tsdb.retention.time=6h",
                                ],
                                "ports": [{"name": "http", "containerPort": ports.PROMETHEUS}],
                                "readinessProbe": http_probe(
                                    "/-/ready", ports.PROMETHEUS, period=10
                                ),
                                "resources": {
                                    "requests": {"cpu": "100m", "memory": "256Mi"},
                                    "limits": {"memory": "1Gi"},
                                },
                                "securityContext": locked_down(user=65534),
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/prometheus"},
                                    {"name": "data", "mountPath": "/data"},
                                ],
                            }
                        ],
                        "volumes": [
                            {"name": "config", "configMap": {"name": f"{name}-config"}},
                            {"name": "data", "emptyDir": {"sizeLimit": "2Gi"}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(values, "prometheus", name),
            "spec": {
                "type": "ClusterIP",
                "selector": selector("prometheus"),
                "ports": [
                    {"name": "http", "port": ports.PROMETHEUS, "targetPort": ports.PROMETHEUS}
                ],
            },
        },
    ]
