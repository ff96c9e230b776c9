"""What `nodemesh install` renders from: the install flags, checked, as one frozen value."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from nodemesh.version import __version__

DEFAULT_REGISTRY = "ghcr.io/nodemesh"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
HA_CONTROLLER_REPLICAS = 3
HA_WEB_REPLICAS = 2

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]{1,255}$")
# A registry host (with an optional port) and an optional path, as image references allow.
_REGISTRY = re.compile(
    r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([-._a-z0-9]*[a-z0-9])?)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class BadValue(ValueError):
    """An install flag with a value nodemesh cannot render; the message names the flag."""


@dataclass(frozen=True)
class InstallValues:
    namespace: str = "nodemesh"
    registry: str = DEFAULT_REGISTRY
    version: str = __version__
    image_pull_policy: str = "IfNotPresent"
    controller_replicas: int = 1
    web_replicas: int = 1
    prometheus_replicas: int = 1
    prometheus: bool = False
    ha: bool = False
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dir: str = "/opt/cni/bin"
    cluster_domain: str = "cluster.local"
    trust_domain: str = "cluster.local"
    # Router mode: the agent's explicit HTTP proxy on every node (port 4144).
    router: bool = True
    # nodemesh-ingress, the edge for Ingresses of class nodemesh (install --ingress).
    ingress: bool = False
    ingress_replicas: int = 1

    def image(self, component: str) -> str:
        return f"{self.registry}/{component}:{self.version}"

    def controlplane_host(self) -> str:
        return f"nodemesh-controlplane.{self.namespace}.svc.{self.cluster_domain}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checked(values: InstallValues) -> InstallValues:
    """Return `values` if every field can be rendered; raise BadValue naming the first flag."""
    v = values
    if not _DNS_LABEL.match(v.namespace):
        raise BadValue(f"--nodemesh-namespace {v.namespace!r} is not a DNS-1123 label")
    if not _REGISTRY.match(v.registry):
        raise BadValue(f"--registry {v.registry!r} is not an image registry (host[:port][/path])")
    if not _TAG.match(v.version):
        raise BadValue(f"--version {v.version!r} is not a valid image tag")
    if v.image_pull_policy not in PULL_POLICIES:
        raise BadValue(f"--image-pull-policy must be one of {', '.join(PULL_POLICIES)}")
    for flag, count in (
        ("--controller-replicas", v.controller_replicas),
        ("--web-replicas", v.web_replicas),
        ("--prometheus-replicas", v.prometheus_replicas),
        ("--ingress-replicas", v.ingress_replicas),
    ):
        if not 1 <= count <= 99:
            raise BadValue(f"{flag} {count} is not from 1 to 99")
    for flag, path in (("--cni-conf-dir", v.cni_conf_dir), ("--cni-bin-dir", v.cni_bin_dir)):
        if not path.startswith("/") or "\n" in path or ".." in path.split("/"):
            raise BadValue(f"{flag} {path!r} must be an absolute path on the nodes")
    if len(v.cluster_domain) > 253 or not _DOMAIN.match(v.cluster_domain):
        raise BadValue(f"--cluster-domain {v.cluster_domain!r} is not a DNS domain")
    if not _TRUST_DOMAIN.match(v.trust_domain):
        raise BadValue(
            f"--trust-domain {v.trust_domain!r} is not a SPIFFE trust domain "
            "(lower-case letters, digits, '.', '-', '_')"
        )
    return v
