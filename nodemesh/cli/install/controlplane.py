"""The control plane's objects: RBAC, identity Secret, Deployment and Service."""

from __future__ import annotations

import base64

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

IDENTITY_SECRET = "nodemesh-identity"
# What the control plane's kubernetes source lists and watches (controlplane.sources.kube).
WATCHED = [
    ("", ["namespaces", "nodes", "pods", "services"]),
    ("apps", ["deployments", "replicasets"]),
    ("discovery.k8s.io", ["endpointslices"]),
    ("policy.nodemesh.io", ["inboundpolicies"]),
    # Mesh routes (Gateway API CRDs, not installed by nodemesh: see GATEWAY_API_NOTE).
    ("gateway.networking.k8s.io", ["httproutes", "grpcroutes"]),
]
GATEWAY_API_VERSION = "v1.2.1"
GATEWAY_API_NOTE = (
    "Note: nodemesh routes with Gateway API HTTPRoute and GRPCRoute (parentRefs naming a Service) "
    "but does not install their CRDs. If your cluster lacks them:\n"
    "  kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/"
    f"{GATEWAY_API_VERSION}/experimental-install.yaml\n"
    "(the experimental channel carries HTTPRoute's `retry` field; the standard-install.yaml of "
    "the same release has everything else). Without the CRDs the control plane simply sees no "
    "routes."
)


def rbac(values: InstallValues) -> list[Obj]:
    name = "nodemesh-controlplane"
    cluster_name = f"{values.namespace}-controlplane"
    subject = [{"kind": "ServiceAccount", "name": name, "namespace": values.namespace}]
    rules: list[Obj] = [
        {"apiGroups": [group], "resources": kinds, "verbs": ["get", "list", "watch"]}
        for group, kinds in WATCHED
    ]
    # Agents prove their node with a projected token the control plane has the API review.
    rules.append(
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
    )
    # Public API callers: their token reviewed as above, their tap/stat rights asked of the API.
    rules.append(
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["subjectaccessreviews"],
            "verbs": ["create"],
        }
    )
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": metadata(values, "controlplane", cluster_name, namespaced=False),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": metadata(values, "controlplane", cluster_name, namespaced=False),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_name,
            },
            "subjects": subject,
        },
        # The one Secret anybody in nodemesh reads: its own CA, by name.
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": metadata(values, "controlplane", f"{name}-identity"),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "resourceNames": [IDENTITY_SECRET],
                    "verbs": ["get"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(values, "controlplane", f"{name}-identity"),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": f"{name}-identity",
            },
            "subjects": subject,
        },
    ]


def identity_secret(values: InstallValues, data: dict[str, bytes]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(values, "controlplane", IDENTITY_SECRET),
        "type": "Opaque",
        "data": {k: base64.b64encode(data[k]).decode() for k in sorted(data)},
    }


def _prometheus_url(values: InstallValues) -> list[str]:
    """With the bundled Prometheus, Stat and Edges come from it (whole cluster, any replica)."""
    if not values.prometheus:
        return []
    host = f"nodemesh-prometheus.{values.namespace}.svc.{values.cluster_domain}"
    return [f"--prometheus-url=http://{host}:{ports.PROMETHEUS}"]


def deployment(values: InstallValues) -> Obj:
    replicas = values.controller_replicas
    container: Obj = {
        "name": "controlplane",
        "image": values.image("controlplane"),
        "imagePullPolicy": values.image_pull_policy,
        "command": ["nodemesh-controlplane"],
        "args": [
            "--source=kubernetes",
            f"--namespace={values.namespace}",
            f"--cluster-domain={values.cluster_domain}",
            f"--ca-secret={values.namespace}/{IDENTITY_SECRET}",
            f"--trust-domain={values.trust_domain}",
            f"--agent-addr=0.0.0.0:{ports.AGENT_API}",
            f"--public-addr=0.0.0.0:{ports.PUBLIC_API}",
            f"--admin-addr=0.0.0.0:{ports.CONTROLPLANE_ADMIN}",
            *_prometheus_url(values),
        ],
        # Its own pod's name: the other control-plane pods are its peers (replicas share
        # telemetry and taps), this one is not.
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [
            {"name": "public-api", "containerPort": ports.PUBLIC_API},
            {"name": "agent-api", "containerPort": ports.AGENT_API},
            {"name": "admin", "containerPort": ports.CONTROLPLANE_ADMIN},
        ],
        "readinessProbe": http_probe("/ready", ports.CONTROLPLANE_ADMIN, period=5),
        "livenessProbe": http_probe("/live", ports.CONTROLPLANE_ADMIN, period=10),
        # The telemetry worker process is ~100 MiB of its own; at 500 nodes x 20 pods the two
        # peaked at 451-573 MiB (bench/results/controlplane-scale.md): 512Mi would OOM-kill it.
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": locked_down(),
    }
    spec: Obj = {
        "serviceAccountName": "nodemesh-controlplane",
        "containers": [container],
        "nodeSelector": {"kubernetes.io/os": "linux"},
    }
    if replicas > 1:
        spec["affinity"] = spread("controlplane")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(values, "controlplane", "nodemesh-controlplane"),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector("controlplane")},
            "template": {
                "metadata": {"labels": labels(values, "controlplane")},
                "spec": spec,
            },
        },
    }


def service(values: InstallValues) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(values, "controlplane", "nodemesh-controlplane"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector("controlplane"),
            "ports": [
                {"name": "public-api", "port": ports.PUBLIC_API, "targetPort": ports.PUBLIC_API},
                {"name": "agent-api", "port": ports.AGENT_API, "targetPort": ports.AGENT_API},
                {
                    "name": "metrics",
                    "port": ports.CONTROLPLANE_ADMIN,
                    "targetPort": ports.CONTROLPLANE_ADMIN,
                },
            ],
        },
    }


def objects(values: InstallValues, identity: dict[str, bytes]) -> list[Obj]:
    return [
        service_account(values, "controlplane", automount=True),
        *rbac(values),
        identity_secret(values, identity),
        deployment(values),
        service(values),
        pdb(values, "controlplane", replicas=values.controller_replicas),
    ]
