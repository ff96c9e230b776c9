"""Which backend a request goes to: the Ingress spec's host and path matching (sans-io).

Hosts: an exact host first, then a `*.` wildcard (one label: `*.example.com` takes
`a.example.com`, not `example.com` nor `a.b.example.com`), then rules without a host. Within the
first of these that has a matching path: an Exact path before any Prefix, then the longest
Prefix, compared element by element (`/foo` takes `/foo`, `/foo/` and `/foo/bar`, not `/foobar`).
When two Ingresses claim the same host and path, the older one wins. Nothing matched: the
oldest defaultBackend, else 404."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ingress.spec import BackendRef, IngressSpec, PathRule


@dataclass(frozen=True, slots=True)
class Match:
    backend: BackendRef
    ingress: str  # namespace/name of the Ingress whose rule matched
    rule: str  # "host path" of the rule, for logs


def normal_host(host: str) -> str:
    """The Host header as rules compare it: lower case, without port or trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal never matches a rule's DNS name
        return host
    host = host.rsplit(":", 1)[0] if ":" in host else host
    return host.rstrip(".")


def _elements(prefix: str) -> tuple[str, ...]:
    return tuple(e for e in prefix.split("/") if e)


def prefix_matches(prefix: tuple[str, ...], path: str) -> bool:
    parts = path.split("/")[1:]
    return tuple(parts[: len(prefix)]) == prefix


@dataclass(frozen=True, slots=True)
class _Path:
    rule: PathRule
    elements: tuple[str, ...]
    ingress: str
    host: str


class RouteTable:
    def __init__(self, specs: Iterable[IngressSpec]) -> None:
        ordered = sorted(specs, key=lambda s: (s.created, s.namespace, s.name))
        self.exact: dict[str, list[_Path]] = {}
        self.wildcard: dict[str, list[_Path]] = {}  # keyed by the suffix after "*."
        self.anyhost: list[_Path] = []
        self.default: Match | None = None
        for spec in ordered:
            if spec.default is not None and self.default is None:
                self.default = Match(spec.default, spec.ref, "defaultBackend")
            for rule in spec.rules:
                if rule.host.startswith("*."):
                    bucket = self.wildcard.setdefault(rule.host[2:], [])
                elif rule.host:
                    bucket = self.exact.setdefault(rule.host, [])
                else:
                    bucket = self.anyhost
                for p in rule.paths:
                    bucket.append(_Path(p, _elements(p.path), spec.ref, rule.host or "*"))

    def match(self, host: str, path: str) -> Match | None:
        host = normal_host(host)
        tiers = [self.exact.get(host)]
        if "." in host:
            tiers.append(self.wildcard.get(host.split(".", 1)[1]))
        tiers.append(self.anyhost)
        for tier in tiers:
            if tier:
                found = _best(tier, path)
                if found is not None:
                    r = found.rule
                    return Match(r.backend, found.ingress, f"{found.host} {r.kind} {r.path}")
        return self.default

    def backends(self) -> set[BackendRef]:
        out = {p.rule.backend for tier in (*self.exact.values(), *self.wildcard.values())
               for p in tier}  # fmt: skip
        out |= {p.rule.backend for p in self.anyhost}
        if self.default is not None:
            out.add(self.default.backend)
        return out


def _best(paths: list[_Path], path: str) -> _Path | None:
    for p in paths:
        if p.rule.kind == "Exact" and p.rule.path == path:
            return p
    best: _Path | None = None
    for p in paths:
        if p.rule.kind != "Prefix" or not prefix_matches(p.elements, path):
            continue
        if best is None or len(p.elements) > len(best.elements):
            best = p  # strictly longer only: on a tie the older Ingress (earlier) keeps it
    return best
