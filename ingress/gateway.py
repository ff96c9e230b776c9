"""Gateway API at the edge (sans-io): a `Gateway` of class nodemesh and the `HTTPRoute`s whose
parentRefs name it, read into the same rules as Ingresses (ingress.spec.IngressSpec).

What is served: listener hostnames and TLS certificates (Secrets in the Gateway's namespace);
route hostnames, path matches (PathPrefix, Exact), one Service backendRef per rule. What is
not (the route is left out and the reason logged): other match types, filters, several
weighted backendRefs, cross-namespace certificates. Listener ports are not honoured: HTTP
routes are served on nodemesh-ingress' HTTP and HTTPS ports alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingress.spec import BackendRef, HostRule, IngressSpec, PathRule, TLSEntry

GROUP = "gateway.networking.k8s.io"
PATH_KINDS = {"PathPrefix": "Prefix", "Exact": "Exact"}


class BadRoute(ValueError):
    """A Gateway or HTTPRoute nodemesh-ingress cannot serve; the message names the field."""


@dataclass(frozen=True, slots=True)
class GatewayRef:
    namespace: str
    name: str


def _meta(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or "default"), str(meta.get("name") or ""),
            str(meta.get("creationTimestamp") or ""))  # fmt: skip


def read_gateway(obj: dict[str, Any]) -> IngressSpec:
    """The Gateway's certificates, as an IngressSpec with TLS entries and no rules."""
    ns, name, created = _meta(obj)
    where = f"Gateway {ns}/{name}"
    tls = []
    for i, listener in enumerate((obj.get("spec") or {}).get("listeners") or []):
        at = f"spec.listeners[{i}]"
        protocol = listener.get("protocol")
        if protocol not in ("HTTP", "HTTPS"):
            raise BadRoute(f"{where}: {at}.protocol: {protocol!r} is not HTTP or HTTPS")
        if protocol != "HTTPS":
            continue
        host = str(listener.get("hostname") or "")
        tls_conf = listener.get("tls") or {}
        if tls_conf.get("mode", "Terminate") != "Terminate":
            raise BadRoute(f"{where}: {at}.tls.mode: only Terminate is served")
        for j, ref in enumerate(tls_conf.get("certificateRefs") or []):
            if ref.get("kind", "Secret") != "Secret" or ref.get("group", "") not in ("", "core"):
                raise BadRoute(f"{where}: {at}.tls.certificateRefs[{j}]: only Secrets are served")
            if ref.get("namespace", ns) != ns:
                raise BadRoute(f"{where}: {at}.tls.certificateRefs[{j}].namespace: only "
                               "Secrets in the Gateway's namespace are served")  # fmt: skip
            tls.append(TLSEntry((host,) if host else (), str(ref.get("name") or "")))
    return IngressSpec(ns, f"gateway/{name}", created, None, (), tuple(tls))


def listener_hosts(obj: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(lst["hostname"]) for lst in (obj.get("spec") or {}).get("listeners") or []
                 if lst.get("hostname"))  # fmt: skip


def parents(route: dict[str, Any]) -> list[GatewayRef]:
    """The Gateways an HTTPRoute attaches to (parentRefs of kind Gateway)."""
    ns, _, _ = _meta(route)
    out = []
    for ref in (route.get("spec") or {}).get("parentRefs") or []:
        if ref.get("kind", "Gateway") == "Gateway" and ref.get("group", GROUP) == GROUP:
            out.append(GatewayRef(str(ref.get("namespace") or ns), str(ref.get("name") or "")))
    return out


def read_route(route: dict[str, Any], gateway_hosts: tuple[str, ...]) -> IngressSpec:
    """An HTTPRoute attached to one of our Gateways, as Ingress rules."""
    ns, name, created = _meta(route)
    where = f"HTTPRoute {ns}/{name}"
    spec = route.get("spec") or {}

    def fail(field: str, msg: str) -> BadRoute:
        return BadRoute(f"{where}: {field}: {msg}")

    paths: list[PathRule] = []
    for i, rule in enumerate(spec.get("rules") or []):
        at = f"spec.rules[{i}]"
        if rule.get("filters"):
            raise fail(f"{at}.filters", "filters are not served at the edge yet")
        refs = rule.get("backendRefs") or []
        if len(refs) != 1:
            raise fail(f"{at}.backendRefs", "exactly one backendRef is served at the edge "
                       f"(weighted splits are not yet), not {len(refs)}")  # fmt: skip
        ref = refs[0]
        if ref.get("kind", "Service") != "Service" or ref.get("group", "") not in ("", "core"):
            raise fail(f"{at}.backendRefs[0]", "only Service backends are served")
        if ref.get("namespace", ns) != ns:
            raise fail(f"{at}.backendRefs[0].namespace", "only Services in the route's "
                       "namespace are served")  # fmt: skip
        port = ref.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise fail(f"{at}.backendRefs[0].port", f"{port!r} is not a port (1-65535)")
        backend = BackendRef(ns, str(ref.get("name") or ""), port)
        matches = rule.get("matches") or [{"path": {"type": "PathPrefix", "value": "/"}}]
        for j, match in enumerate(matches):
            extra = sorted(k for k in match if k != "path")
            if extra:
                raise fail(f"{at}.matches[{j}]", f"{', '.join(extra)} matches are not served "
                           "at the edge yet")  # fmt: skip
            p = match.get("path") or {"type": "PathPrefix", "value": "/"}
            kind = PATH_KINDS.get(p.get("type", "PathPrefix"))
            if kind is None:
                raise fail(f"{at}.matches[{j}].path.type", f"{p.get('type')!r} is not served "
                           "(PathPrefix, Exact)")  # fmt: skip
            value = str(p.get("value", "/"))
            if not value.startswith("/"):
                raise fail(f"{at}.matches[{j}].path.value", f"{value!r} must start with '/'")
            paths.append(PathRule(kind, value, backend))
    hosts = tuple(str(h).lower() for h in spec.get("hostnames") or []) or gateway_hosts or ("",)
    rules = tuple(HostRule(h, tuple(paths)) for h in hosts)
    return IngressSpec(ns, f"httproute/{name}", created, None, rules, ())
