"""The node agent DaemonSet (with install-cni beside it) and its ServiceAccount.

The agent reads nothing from the Kubernetes API, so it gets no RBAC at all: it proves its node to
the control plane with a projected service-account token for audience `nodemesh`, and trusts the
control plane through the trust anchor from the ConfigMap (never the Secret with the issuer key).
"""

from __future__ import annotations

from nodemesh.cli.install.meta import Obj, http_probe, labels, metadata, selector, service_account
from nodemesh.cli.install.values import InstallValues

CAPABILITIES = ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]
ADMIN_PORT = 4191
TOKEN_AUDIENCE = "nodemesh"
CONFIG_MAP = "nodemesh-config"
# Paths inside the agent's containers.
RUN_DIR = "/var/run/nodemesh"  # host path too: nodemesh-cni, run by the runtime, dials the socket
TOKEN_DIR = "/var/run/secrets/nodemesh/token"
ANCHOR_DIR = "/etc/nodemesh/trust"
XTABLES_LOCK = "/run/xtables.lock"
HOST_CNI_CONF, HOST_CNI_BIN = "/host/etc/cni/net.d", "/host/opt/cni/bin"


def _agent(values: InstallValues) -> Obj:
    return {
        "name": "agent",
        "image": values.image("agent"),
        "imagePullPolicy": values.image_pull_policy,
        "command": ["nodemesh-agent"],
        "args": [
            "--node=$(NODE_NAME)",
            f"--cni-socket={RUN_DIR}/cni.sock",
            f"--state-file={RUN_DIR}/agent-state.json",
            f"--controlplane={values.controlplane_host()}:8086",
            f"--controlplane-ca={ANCHOR_DIR}/ca.crt",
            f"--cluster-domain={values.cluster_domain}",
            f"--token-file={TOKEN_DIR}/token",
            f"--admin-addr=0.0.0.0:{ADMIN_PORT}",
            "--netns-dir=/run/netns",
        ],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "ports": [{"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "readinessProbe": http_probe("/ready", ADMIN_PORT, period=5),
        "livenessProbe": http_probe("/live", ADMIN_PORT, period=10),
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            # Root inside the pod's netns to install rules; only these capabilities, not all.
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"add": list(CAPABILITIES), "drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "run", "mountPath": RUN_DIR},
            # Pod namespaces created after the agent started must show up inside it.
            {"name": "netns", "mountPath": "/run/netns", "mountPropagation": "HostToContainer"},
            {"name": "trust-anchors", "mountPath": ANCHOR_DIR, "readOnly": True},
            {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            # iptables-legacy-restore -w takes this lock (the root filesystem is read-only);
            # the host's own file, so the agent serialises with every other iptables user there.
            {"name": "xtables-lock", "mountPath": XTABLES_LOCK},
        ],
    }


def _install_cni(values: InstallValues) -> Obj:
    return {
        "name": "install-cni",
        "image": values.image("agent"),
        "imagePullPolicy": values.image_pull_policy,
        # watch: install now, re-append whenever the primary CNI rewrites its conflist.
        "command": ["python3", "-m", "nodemesh_cni.install", "watch"],
        "args": [
            f"--conf-dir={HOST_CNI_CONF}",
            f"--bin-dir={HOST_CNI_BIN}",
            f"--agent-socket={RUN_DIR}/cni.sock",
            f"--exclude-namespaces=kube-system,{values.namespace}",
        ],
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "cni-conf", "mountPath": HOST_CNI_CONF},
            {"name": "cni-bin", "mountPath": HOST_CNI_BIN},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def _volumes(values: InstallValues) -> list[Obj]:
    def host(name: str, path: str, kind: str) -> Obj:
        return {"name": name, "hostPath": {"path": path, "type": kind}}

    return [
        host("cni-conf", values.cni_conf_dir, "DirectoryOrCreate"),
        host("cni-bin", values.cni_bin_dir, "DirectoryOrCreate"),
        host("run", RUN_DIR, "DirectoryOrCreate"),
        host("netns", "/var/run/netns", "DirectoryOrCreate"),
        host("xtables-lock", XTABLES_LOCK, "FileOrCreate"),
        {
            "name": "trust-anchors",
            "configMap": {"name": CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]},
        },
        {
            "name": "token",
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": TOKEN_AUDIENCE,
                            "expirationSeconds": 3600,
                            "path": "token",
                        }
                    }
                ]
            },
        },
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]


def daemonset(values: InstallValues) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata(values, "agent", "nodemesh-agent"),
        "spec": {
            "selector": {"matchLabels": selector("agent")},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels(values, "agent")},
                "spec": {
                    "serviceAccountName": "nodemesh-agent",
                    "automountServiceAccountToken": False,
                    "hostNetwork": True,
                    # The agent dials the control plane by its Service name.
                    "dnsPolicy": "ClusterFirstWithHostNet",
                    "priorityClassName": "system-node-critical",
                    "tolerations": [{"operator": "Exists"}],
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "terminationGracePeriodSeconds": 30,
                    "containers": [_agent(values), _install_cni(values)],
                    "volumes": _volumes(values),
                },
            },
        },
    }


def objects(values: InstallValues) -> list[Obj]:
    return [service_account(values, "agent", automount=False), daemonset(values)]
