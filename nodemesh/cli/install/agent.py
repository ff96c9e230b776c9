"""The node agent DaemonSet (with install-cni beside it), its ServiceAccount and its one RBAC rule.

The agent itself reads nothing from the Kubernetes API: it proves its node to the control plane
with a projected service-account token for audience `nodemesh`, and trusts the control plane
through the trust anchor from the ConfigMap (never the Secret with the issuer key). install-cni,
beside it, may `get` exactly its own DaemonSet and namespace: on SIGTERM that tells an uninstall
(restore the node, have the agent un-mesh running pods) from a restart or a rollout (keep
nodemesh-cni so no pod starts unmeshed); see nodemesh_cni.owner.
"""

from __future__ import annotations

from nodemesh import ports
from nodemesh.cli.install.meta import Obj, http_probe, labels, metadata, selector, service_account
from nodemesh.cli.install.values import InstallValues

CAPABILITIES = ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]
TOKEN_AUDIENCE = "nodemesh"
CONFIG_MAP = "nodemesh-config"
# Paths inside the agent's containers.
RUN_DIR = "/var/run/nodemesh"  # host path too: nodemesh-cni, run by the runtime, dials the socket
TOKEN_DIR = "/var/run/secrets/nodemesh/token"
ANCHOR_DIR = "/etc/nodemesh/trust"
XTABLES_LOCK = "/run/xtables.lock"
# An emptyDir of the pod, shared by the agent's container and the socket park's.
PARK_DIR = "/var/run/nodemesh-park"
HOST_CNI_CONF, HOST_CNI_BIN = "/host/etc/cni/net.d", "/host/opt/cni/bin"
# Where in-cluster clients look for the API token and CA (install-cni only).
API_ACCESS_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DAEMONSET = "nodemesh-agent"
# SIGTERM: how long the agent waits for install-cni's uninstall verdict, and how long install-cni
# waits for the agent to un-mesh running pods (both inside terminationGracePeriodSeconds).
UNINSTALL_WAIT, AGENT_WAIT = 5, 15


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
            # On the host: a new agent pod finds the old one's here and takes its sockets.
            f"--handover-socket={RUN_DIR}/handover.sock",
            f"--controlplane={values.controlplane_host()}:{ports.AGENT_API}",
            f"--controlplane-ca={ANCHOR_DIR}/ca.crt",
            f"--cluster-domain={values.cluster_domain}",
            f"--token-file={TOKEN_DIR}/token",
            f"--admin-addr=0.0.0.0:{ports.AGENT_ADMIN}",
            "--netns-dir=/run/netns",
            # PID 1 keeps copies of the listening sockets: an agent that crashes is restarted
            # at once and refuses no connection meanwhile (nodeagent.handover.keeper).
            "--keep-sockets",
            # ... and hands them to the socket park beside it, which holds them while the
            # agent's container restarts (nodeagent.handover.park).
            f"--socket-park={PARK_DIR}/park.sock",
            f"--uninstall-wait-seconds={UNINSTALL_WAIT}",
            # Router mode: this node's pods may send through <node>:4144 (HTTP_PROXY).
            f"--router-addr=0.0.0.0:{ports.ROUTER}" if values.router else "--no-router",
        ],
        "env": [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            # -OO for the keeper and the agent: no docstrings in their code objects (-1.6 MB of
            # the pair's RSS, issue 17; the image carries the matching .opt-2.pyc). It drops
            # `assert` statements too: nothing in nodeagent relies on one to run.
            {"name": "PYTHONOPTIMIZE", "value": "2"},
        ],
        # hostNetwork: the container's ports are the node's (hostPort must equal containerPort).
        "ports": [
            {"name": "admin", "containerPort": ports.AGENT_ADMIN, "protocol": "TCP"},
            *(
                [
                    {
                        "name": "router",
                        "containerPort": ports.ROUTER,
                        "hostPort": ports.ROUTER,
                        "protocol": "TCP",
                    }
                ]
                if values.router
                else []
            ),
        ],  # fmt: skip
        # hostNetwork: during a rollout both agents' pods would probe the one port 4191, and the
        # new pod's httpGet would get the old agent's 200 before the hand-over (a slow start-up
        # outlasted any initial delay). Ready only when the admin port is this container's own
        # (taken over) and answers /ready (nodeagent.readycheck).
        "readinessProbe": {
            "exec": {
                "command": ["python3", "-m", "nodeagent.readycheck", f"--port={ports.AGENT_ADMIN}"]
            },
            "initialDelaySeconds": 2,
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },  # fmt: skip
        "livenessProbe": http_probe("/live", ports.AGENT_ADMIN, period=10),
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
            {"name": "park", "mountPath": PARK_DIR},
        ],
    }


def _socket_park(values: InstallValues) -> Obj:
    """Holds the agent's listening sockets while the agent's container restarts: new
    connections of meshed pods wait in their accept queues instead of being refused."""
    return {
        "name": "socket-park",
        "image": values.image("agent"),
        "imagePullPolicy": values.image_pull_policy,
        "command": ["python3", "-m", "nodeagent.handover.park"],
        "args": [f"--socket={PARK_DIR}/park.sock"],
        "resources": {"requests": {"cpu": "5m", "memory": "24Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            # The agent's user: each end checks the other's (SO_PEERCRED). No capability:
            # holding a socket needs none.
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "park", "mountPath": PARK_DIR}],
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
            # On SIGTERM: leave the node only if this DaemonSet (or its namespace) is going.
            f"--daemonset={values.namespace}/{DAEMONSET}",
            f"--agent-wait={AGENT_WAIT}",
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
            # The uninstall flag for the agent, and nodemesh's files to remove on uninstall.
            {"name": "run", "mountPath": RUN_DIR},
            {"name": "api-access", "mountPath": API_ACCESS_DIR, "readOnly": True},
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
        {
            # What automountServiceAccountToken would give, for install-cni alone.
            "name": "api-access",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3600, "path": "token"}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ]
            },
        },
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        # The socket park's unix socket: the pod's own, so a new pod of a rollout starts with
        # an empty park (it gets its sockets from the old agent instead).
        {"name": "park", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    ]


def daemonset(values: InstallValues) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": metadata(values, "agent", DAEMONSET),
        "spec": {
            "selector": {"matchLabels": selector("agent")},
            # The new agent starts beside the old one on each node, takes its sockets over and
            # becomes ready; only then is the old one stopped (nodeagent.handover.sockets).
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
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
                    # Room for --handover-wait-seconds (15; the uninstall wait runs inside it)
                    # then --drain-seconds (10).
                    "terminationGracePeriodSeconds": 30,
                    "containers": [_agent(values), _install_cni(values), _socket_park(values)],
                    "volumes": _volumes(values),
                },
            },
        },
    }


def rbac(values: InstallValues) -> list[Obj]:
    """install-cni's question at SIGTERM: are my DaemonSet and my namespace still there?"""
    name = f"{values.namespace}-agent"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": metadata(values, "agent", name, namespaced=False),
            "rules": [
                {
                    "apiGroups": ["apps"],
                    "resources": ["daemonsets"],
                    "resourceNames": [DAEMONSET],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["namespaces"],
                    "resourceNames": [values.namespace],
                    "verbs": ["get"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": metadata(values, "agent", name, namespaced=False),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": "nodemesh-agent", "namespace": values.namespace}
            ],
        },
    ]


def objects(values: InstallValues) -> list[Obj]:
    return [service_account(values, "agent", automount=False), *rbac(values), daemonset(values)]
