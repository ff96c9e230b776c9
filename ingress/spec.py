"""Kubernetes Ingress objects (networking.k8s.io/v1) read into plain, checked rules (sans-io).

Every error names the Ingress and the field, as `kubectl apply` would."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

API_VERSION = "networking.k8s.io/v1"
CLASS_NAME = "nodemesh"
CONTROLLER = "nodemesh.io/ingress"
CLASS_ANNOTATION = "kubernetes.io/ingress.class"  # the deprecated way, still common
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
PATH_TYPES = ("Exact", "Prefix", "ImplementationSpecific")

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_HOST = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
_IPV4 = re.compile(r"^[0-9.]+$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class BadIngress(ValueError):
    """An Ingress nodemesh cannot serve; the message names it and the field."""


@dataclass(frozen=True, slots=True)
class BackendRef:
    """A Service port in the Ingress' namespace, by number or by name."""

    namespace: str
    service: str
    port: int | str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.service}:{self.port}"


@dataclass(frozen=True, slots=True)
class PathRule:
    kind: str  # "Exact" | "Prefix" (ImplementationSpecific is read as Prefix)
    path: str
    backend: BackendRef


@dataclass(frozen=True, slots=True)
class HostRule:
    host: str  # "" for every host, "*.example.com" for one label under example.com
    paths: tuple[PathRule, ...]


@dataclass(frozen=True, slots=True)
class TLSEntry:
    hosts: tuple[str, ...]
    secret: str  # in the Ingress' namespace; "" when absent


@dataclass(frozen=True, slots=True)
class IngressSpec:
    namespace: str
    name: str
    created: str  # creationTimestamp: the older Ingress wins a conflict, as controllers do
    default: BackendRef | None
    rules: tuple[HostRule, ...]
    tls: tuple[TLSEntry, ...]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def hosts(self) -> tuple[str, ...]:
        return tuple(r.host for r in self.rules if r.host)


def class_of(obj: dict[str, Any]) -> str | None:
    """The class an Ingress asks for: spec.ingressClassName, else the old annotation."""
    spec = obj.get("spec") or {}
    name = spec.get("ingressClassName") if isinstance(spec, dict) else None
    if name:
        return str(name)
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    value = ann.get(CLASS_ANNOTATION)
    return str(value) if value else None


def classes_served(ingress_classes: list[dict[str, Any]], *, name: str = CLASS_NAME) -> set[str]:
    """Class names this controller serves: `name`, and every IngressClass naming its controller.
    "" in the set: Ingresses without a class, when one of ours is the cluster's default."""
    served = {name}
    for ic in ingress_classes:
        if (ic.get("spec") or {}).get("controller") != CONTROLLER:
            continue
        meta = ic.get("metadata") or {}
        served.add(str(meta.get("name", "")))
        if str((meta.get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION)) == "true":
            served.add("")
    return served


def is_served(obj: dict[str, Any], served: set[str]) -> bool:
    return (class_of(obj) or "") in served


def read_ingress(obj: dict[str, Any]) -> IngressSpec:
    """The rules of one Ingress; BadIngress names the first field nodemesh cannot serve."""
    meta = obj.get("metadata") or {}
    ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    where = f"Ingress {ns}/{name}"

    def fail(field: str, msg: str) -> BadIngress:
        return BadIngress(f"{where}: {field}: {msg}")

    if obj.get("apiVersion") not in (None, API_VERSION):
        raise fail("apiVersion", f"{obj.get('apiVersion')!r} is not {API_VERSION}")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise fail("spec", "required field is missing")
    default = None
    if spec.get("defaultBackend") is not None:
        default = _backend(spec["defaultBackend"], ns, "spec.defaultBackend", fail)
    rules_raw = spec.get("rules") or []
    if not isinstance(rules_raw, list):
        raise fail("spec.rules", "must be a list")
    rules = []
    for i, rule in enumerate(rules_raw):
        at = f"spec.rules[{i}]"
        if not isinstance(rule, dict):
            raise fail(at, "must be a mapping")
        host = _host(rule.get("host"), f"{at}.host", fail)
        http = rule.get("http")
        if http is None:
            continue  # a host with no paths: only its TLS matters (the defaultBackend serves it)
        paths_raw = http.get("paths") if isinstance(http, dict) else None
        if not isinstance(paths_raw, list) or not paths_raw:
            raise fail(f"{at}.http.paths", "required: at least one path")
        paths = []
        for j, p in enumerate(paths_raw):
            pat = f"{at}.http.paths[{j}]"
            if not isinstance(p, dict):
                raise fail(pat, "must be a mapping")
            kind = p.get("pathType")
            if kind not in PATH_TYPES:
                raise fail(f"{pat}.pathType", f"{kind!r} is not one of {', '.join(PATH_TYPES)}")
            path = p.get("path", "/")
            if not isinstance(path, str) or not path.startswith("/"):
                raise fail(f"{pat}.path", f"{path!r} must be an absolute path (start with '/')")
            kind = "Exact" if kind == "Exact" else "Prefix"
            backend = _backend(p.get("backend"), ns, f"{pat}.backend", fail)
            paths.append(PathRule(kind, path, backend))
        rules.append(HostRule(host, tuple(paths)))
    if default is None and not rules:
        raise fail("spec", "needs rules with paths or a defaultBackend")
    tls = []
    for i, t in enumerate(spec.get("tls") or []):
        at = f"spec.tls[{i}]"
        if not isinstance(t, dict):
            raise fail(at, "must be a mapping")
        hosts = tuple(_host(h, f"{at}.hosts", fail) for h in t.get("hosts") or [])
        secret = t.get("secretName") or ""
        if secret and not _NAME.match(str(secret).replace(".", "-")):
            raise fail(f"{at}.secretName", f"{secret!r} is not a Secret name")
        tls.append(TLSEntry(tuple(h for h in hosts if h), str(secret)))
    return IngressSpec(
        namespace=ns,
        name=name,
        created=str(meta.get("creationTimestamp") or ""),
        default=default,
        rules=tuple(rules),
        tls=tuple(tls),
    )


def _host(raw: Any, field: str, fail: Any) -> str:
    if raw is None or raw == "":
        return ""
    host = str(raw).lower()
    if _IPV4.match(host) or ":" in host:
        raise fail(field, f"{raw!r}: an Ingress host must be a DNS name, not an IP address")
    if len(host) > 253 or not _HOST.match(host):
        raise fail(field, f"{raw!r} is not a DNS name (a leading '*.' is the only wildcard)")
    return host


def _backend(raw: Any, ns: str, field: str, fail: Any) -> BackendRef:
    if not isinstance(raw, dict):
        raise fail(field, "required field is missing")
    if "resource" in raw:
        raise fail(f"{field}.resource", "resource backends are not supported; name a Service")
    svc = raw.get("service")
    if not isinstance(svc, dict) or not svc.get("name"):
        raise fail(f"{field}.service.name", "required field is missing")
    port = svc.get("port")
    if not isinstance(port, dict):
        raise fail(f"{field}.service.port", "required: a number or a name")
    number, pname = port.get("number"), port.get("name")
    if (number is None) == (pname is None):
        raise fail(f"{field}.service.port", "exactly one of number and name is required")
    if number is not None:
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise fail(f"{field}.service.port.number", f"{number!r} is not a port (1-65535)")
        return BackendRef(ns, str(svc["name"]), number)
    return BackendRef(ns, str(svc["name"]), str(pname))
