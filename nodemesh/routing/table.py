"""Which route rule a request takes, and which backend (sans-io: the agent's L7 path calls it).

Precedence follows Gateway API's HTTPRoute rules, across every route attached to a Service port:
an Exact path first, then a regular expression, then the longest PathPrefix; then a method
condition; then the most header conditions; then the most query conditions; ties go to the
oldest route, then namespace/name, then the rule's and match's order. Hostnames are not used to
match: a mesh route is chosen by the Service the client called (GAMMA).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from nodemesh.model import ServiceKey
from nodemesh.routing.model import Backend, PathKind, Route, RouteKey, RouteMatch, RouteRule


@dataclass(frozen=True, slots=True)
class Selected:
    route: Route
    rule_index: int
    match: RouteMatch

    @property
    def rule(self) -> RouteRule:
        return self.route.rules[self.rule_index]

    @property
    def label(self) -> str:
        return self.route.rule_label(self.rule_index)


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def path_matches(m: RouteMatch, path: str) -> bool:
    """`path` is the request path without the query string."""
    if m.path_kind is PathKind.ANY:
        return True
    if m.path_kind is PathKind.EXACT:
        return path == m.path
    if m.path_kind is PathKind.REGEX:
        return _compiled(m.path).fullmatch(path) is not None
    prefix = m.path.rstrip("/")
    # Element-wise: /foo matches /foo, /foo/ and /foo/bar, never /foobar.
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def request_matches(
    m: RouteMatch,
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
) -> bool:
    if m.method and m.method != method:
        return False
    if not path_matches(m, path):
        return False
    for h in m.headers:
        value = headers.get(h.name.lower())
        if value is None or not _value_ok(h.regex, h.value, value):
            return False
    for q in m.query:
        value = query.get(q.name)
        if value is None or not _value_ok(q.regex, q.value, value):
            return False
    return True


def _value_ok(regex: bool, want: str, value: str) -> bool:
    return _compiled(want).fullmatch(value) is not None if regex else value == want


def _rank(route: Route, rule_index: int, match_index: int, m: RouteMatch) -> tuple[object, ...]:
    kind_rank = {PathKind.EXACT: 0, PathKind.REGEX: 1, PathKind.PREFIX: 2, PathKind.ANY: 2}
    prefix_len = len(m.path.rstrip("/")) if m.path_kind is PathKind.PREFIX else 0
    return (
        kind_rank[m.path_kind],
        -prefix_len,
        0 if m.method else 1,
        -len(m.headers),
        -len(m.query),
        route.created or "~",
        route.key.namespace,
        route.key.name,
        rule_index,
        match_index,
    )


MERGED_MAX = 4096


class RouteTable:
    """Routes by the Service (and port) they attach to; `select` finds the rule for a request."""

    def __init__(self) -> None:
        self.routes: dict[RouteKey, Route] = {}
        self._by_parent: dict[tuple[ServiceKey, int], list[tuple[Route, int, RouteMatch]]] = {}
        # Per Service port asked for: its own entries and the port-less ones, in rank order
        # (made on the first request, not for every one; emptied by every change).
        self._merged: dict[tuple[ServiceKey, int], list[tuple[Route, int, RouteMatch]]] = {}

    def replace(self, routes: list[Route]) -> None:
        self.routes = {r.key: r for r in routes}
        self._rebuild()

    def update(self, route: Route) -> None:
        self.routes[route.key] = route
        self._rebuild()

    def remove(self, key: RouteKey) -> None:
        if self.routes.pop(key, None) is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        ranked: dict[
            tuple[ServiceKey, int], list[tuple[tuple[object, ...], Route, int, RouteMatch]]
        ]
        ranked = {}
        for route in self.routes.values():
            for parent in route.parents:
                entries = ranked.setdefault((parent.service, parent.port), [])
                for ri, rule in enumerate(route.rules):
                    for mi, m in enumerate(rule.matches):
                        entries.append((_rank(route, ri, mi, m), route, ri, m))
        self._by_parent = {
            k: [(r, ri, m) for _, r, ri, m in sorted(v, key=lambda e: e[0])]
            for k, v in ranked.items()
        }
        self._merged = {}

    def _entries(self, service: ServiceKey, port: int) -> list[tuple[Route, int, RouteMatch]]:
        key = (service, port)
        entries = self._merged.get(key)
        if entries is None:
            entries = self._by_parent.get(key, [])
            if (service, 0) in self._by_parent:
                entries = entries + self._by_parent[(service, 0)]
                entries.sort(key=lambda e: _rank(e[0], e[1], 0, e[2]))
            if len(self._merged) >= MERGED_MAX:  # ports nobody routes, asked for at random
                self._merged.clear()
            self._merged[key] = entries
        return entries

    def routed(self, service: ServiceKey, port: int) -> bool:
        """Whether any route attaches to this Service port (the L7 path is then required)."""
        return (service, port) in self._by_parent or (service, 0) in self._by_parent

    def select(
        self,
        service: ServiceKey,
        port: int,
        *,
        method: str,
        path: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
    ) -> Selected | None:
        """The winning rule, or None when routes attach here but none matches (answer 404)."""
        for route, ri, m in self._entries(service, port):
            if request_matches(m, method=method, path=path, headers=headers, query=query):
                return Selected(route, ri, m)
        return None


def pick_backend(backends: tuple[Backend, ...], rand: Callable[[], float]) -> Backend | None:
    """A backend chosen by weight (`rand()` in [0, 1)); None when every weight is 0."""
    if len(backends) == 1:
        return backends[0] if backends[0].weight > 0 else None
    cumulative: list[int] = []
    total = 0
    for b in backends:
        total += b.weight
        cumulative.append(total)
    if total == 0:
        return None
    return backends[bisect.bisect_right(cumulative, rand() * total)]


def rewrite_path(path: str, m: RouteMatch, kind: str, value: str) -> str:
    """URLRewrite / RequestRedirect path: ReplaceFullPath, or ReplacePrefixMatch of the matched
    prefix (element-wise, keeping the rest of the path)."""
    if kind == "ReplaceFullPath":
        return value
    prefix = m.path.rstrip("/")
    rest = path[len(prefix) :]
    new = value.rstrip("/") + rest
    return new if new.startswith("/") else "/" + new
