"""nodemesh-ingress (`install --ingress`): the edge serving Ingresses of class nodemesh.

It runs in a namespace of its own, labelled to be meshed: its calls to the backends are captured
by its node's agent and sent with mTLS under its own identity, so the mesh shows
ingress -> backend like any other edge. Its own listeners are left out of inbound capture
(clients from outside the mesh reach them unchanged, in strict mode too)."""

from __future__ import annotations

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

COMPONENT = "ingress"
NAME = "nodemesh-ingress"
CLASS_NAME = "nodemesh"
CONTROLLER = "nodemesh.io/ingress"
# What nodemesh-ingress lists and watches (ingress.sources.KubeSource).
WATCHED = [
    ("networking.k8s.io", ["ingresses", "ingressclasses"]),
    ("", ["services", "secrets"]),
    ("discovery.k8s.io", ["endpointslices"]),
    # Gateway API at the edge (CRDs not installed by nodemesh; without them: none served).
    ("gateway.networking.k8s.io", ["gateways", "httproutes"]),
]


SKIPPED = f"{ports.INGRESS_HTTP},{ports.INGRESS_HTTPS}"  # its listeners: outside the mesh's capture


def namespace_of(values: InstallValues) -> str:
    return f"{values.namespace}-ingress"


def _in_ns(values: InstallValues, name: str) -> Obj:
    meta = metadata(values, COMPONENT, name)
    meta["namespace"] = namespace_of(values)
    return meta


def objects(values: InstallValues) -> list[Obj]:
    ns = namespace_of(values)
    cluster_name = f"{values.namespace}-ingress"
    account = service_account(values, COMPONENT, automount=True)
    account["metadata"]["namespace"] = ns
    namespace_meta = metadata(values, COMPONENT, ns, namespaced=False)
    namespace_meta["labels"]["nodemesh.io/mesh"] = "enabled"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": namespace_meta},
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": metadata(values, COMPONENT, CLASS_NAME, namespaced=False),
            "spec": {"controller": CONTROLLER},
        },
        account,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": metadata(values, COMPONENT, cluster_name, namespaced=False),
            "rules": [
                {"apiGroups": [group], "resources": kinds, "verbs": ["get", "list", "watch"]}
                for group, kinds in WATCHED
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": metadata(values, COMPONENT, cluster_name, namespaced=False),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}],
        },
        deployment(values),
        service(values),
        _pdb(values),
    ]


def deployment(values: InstallValues) -> Obj:
    replicas = values.ingress_replicas
    container: Obj = {
        "name": "ingress",
        # The control plane's image holds every nodemesh program, this one included.
        "image": values.image("controlplane"),
        "imagePullPolicy": values.image_pull_policy,
        "command": ["nodemesh-ingress"],
        "args": [
            "--source=kubernetes",
            f"--ingress-class={CLASS_NAME}",
            f"--http-addr=0.0.0.0:{ports.INGRESS_HTTP}",
            f"--https-addr=0.0.0.0:{ports.INGRESS_HTTPS}",
            f"--admin-addr=0.0.0.0:{ports.INGRESS_ADMIN}",
        ],
        "ports": [
            {"name": "http", "containerPort": ports.INGRESS_HTTP},
            {"name": "https", "containerPort": ports.INGRESS_HTTPS},
            {"name": "admin", "containerPort": ports.INGRESS_ADMIN},
        ],
        "readinessProbe": http_probe("/ready", ports.INGRESS_ADMIN, period=5),
        "livenessProbe": http_probe("/live", ports.INGRESS_ADMIN, period=10),
        "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": locked_down(),
        # TLS keys pass through a private temporary file (the ssl module loads files only).
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    spec: Obj = {
        "serviceAccountName": NAME,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
    }
    if replicas > 1:
        spec["affinity"] = spread(COMPONENT)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _in_ns(values, NAME),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(COMPONENT)},
            "template": {
                "metadata": {
                    "labels": labels(values, COMPONENT),
                    "annotations": {"nodemesh.io/skip-inbound-ports": SKIPPED},
                },
                "spec": spec,
            },
        },
    }


def service(values: InstallValues) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _in_ns(values, NAME),
        "spec": {
            "type": "LoadBalancer",
            # Keeps the client's address (X-Forwarded-For) instead of a node's.
            "externalTrafficPolicy": "Local",
            "selector": selector(COMPONENT),
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "https", "port": 443, "targetPort": "https"},
            ],
        },
    }


def _pdb(values: InstallValues) -> Obj:
    obj = pdb(values, COMPONENT, replicas=values.ingress_replicas)
    obj["metadata"]["namespace"] = namespace_of(values)
    return obj
