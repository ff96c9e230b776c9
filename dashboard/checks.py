"""What the dashboard accepts from a URL (names, windows, tap filters) and the errors it shows.

Checked before anything reaches the control plane, so a bad value is a 400 with a message that
says what is wrong, and a name the cluster does not have is a 404, never a 500.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Kubernetes names: namespaces are DNS labels, most other objects DNS subdomains.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_METHOD = re.compile(r"[A-Z]{1,20}")
MIN_WINDOW, MAX_WINDOW = 10, 900
MAX_TAP_RPS = 100.0
TAP_KINDS = {"deploy": "deploy", "deployment": "deploy", "pod": "pod", "po": "pod"}
TAP_KINDS |= {"ns": "ns", "namespace": "ns", "svc": "svc", "service": "svc"}


class BadInput(ValueError):
    """A value the dashboard does not accept (400)."""


class NotFound(LookupError):
    """A namespace or resource the cluster does not have (404)."""


def namespace_name(value: str, what: str = "namespace") -> str:
    if not _LABEL.fullmatch(value):
        raise BadInput(f"{what} {value!r} is not a valid namespace name (lower-case DNS label)")
    return value


def object_name(value: str, what: str = "name") -> str:
    if not _SUBDOMAIN.fullmatch(value):
        raise BadInput(f"{what} {value!r} is not a valid Kubernetes object name")
    return value


def window(value: int) -> int:
    if not MIN_WINDOW <= value <= MAX_WINDOW:
        raise BadInput(f"window must be {MIN_WINDOW}-{MAX_WINDOW} seconds, not {value}")
    return value


@dataclass(frozen=True)
class Ref:
    """A resource named in a filter: kind (deploy, pod, ns, svc), namespace, name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}" if self.kind != "ns" else f"ns/{self.namespace}"


def ref(value: str, *, namespace: str, what: str) -> Ref:
    """`kind/name` (or `ns/<namespace>`) as typed in a filter box."""
    kind, sep, name = value.strip().partition("/")
    if not sep or not name:
        raise BadInput(f"{what} {value!r}: write kind/name, e.g. deploy/web or ns/emojivoto")
    canonical = TAP_KINDS.get(kind.lower())
    if canonical is None:
        raise BadInput(f"{what} {value!r}: kind must be one of deploy, pod, ns, svc")
    if canonical == "ns":
        return Ref("ns", namespace_name(name, what), "")
    return Ref(canonical, namespace_name(namespace), object_name(name, what))


@dataclass(frozen=True)
class TapFilter:
    resource: Ref
    to: Ref | None
    method: str
    path_prefix: str
    max_rps: float


def tap_filter(
    *,
    resource: str,
    namespace: str,
    to: str,
    to_namespace: str,
    method: str,
    path: str,
    max_rps: float,
) -> TapFilter:
    res = ref(resource, namespace=namespace, what="resource")
    dst = ref(to, namespace=to_namespace or namespace, what="to") if to.strip() else None
    method = method.strip().upper()
    if method and not _METHOD.fullmatch(method):
        raise BadInput(f"method {method!r} is not an HTTP method (letters only, e.g. GET)")
    path = path.strip()
    if path and (not path.startswith("/") or len(path) > 512 or not path.isprintable()):
        raise BadInput("path prefix must start with / and be at most 512 printable characters")
    if not 0 < max_rps <= MAX_TAP_RPS:
        raise BadInput(f"max_rps must be above 0 and at most {MAX_TAP_RPS:g}")
    return TapFilter(res, dst, method, path, max_rps)
