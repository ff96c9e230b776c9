"""Compiled mesh routes (GAMMA HTTPRoute / GRPCRoute whose parents are Services): what the control
plane derives from the resources and the agents act on. Plain frozen data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from nodemesh.model import ServiceKey


class PathKind(StrEnum):
    ANY = ""  # no path condition
    EXACT = "Exact"
    PREFIX = "PathPrefix"
    REGEX = "RegularExpression"


@dataclass(frozen=True, slots=True, order=True)
class RouteKey:
    kind: str  # HTTPRoute or GRPCRoute
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header or query parameter condition: exact value, or a regular expression (fullmatch)."""

    name: str
    value: str
    regex: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path_kind: PathKind = PathKind.ANY
    path: str = ""
    method: str = ""  # "" = any
    headers: tuple[ValueMatch, ...] = ()
    query: tuple[ValueMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True, slots=True)
class PathModifier:
    """URLRewrite / RequestRedirect path: the whole path, or the prefix the rule matched."""

    kind: str  # ReplaceFullPath or ReplacePrefixMatch
    value: str


@dataclass(frozen=True, slots=True)
class Rewrite:
    hostname: str = ""
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True)
class Redirect:
    scheme: str = ""
    hostname: str = ""
    path: PathModifier | None = None
    port: int = 0
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class Backend:
    service: ServiceKey
    port: int  # 0: the port the client called
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Retry:
    codes: tuple[int, ...] = ()
    attempts: int = 0  # retries after the first try (Gateway API's meaning)
    backoff_ms: int = 0


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Retries may be at most `ratio` of the requests of the last `ttl_s` seconds, plus
    `min_per_second` (Linkerd's budget), so a failing backend never turns into a retry storm."""

    ratio: float = 0.2
    min_per_second: int = 10
    ttl_s: int = 10


@dataclass(frozen=True, slots=True)
class RouteRule:
    matches: tuple[RouteMatch, ...] = (RouteMatch(),)
    backends: tuple[Backend, ...] = ()
    request_headers: HeaderModifier = HeaderModifier()
    response_headers: HeaderModifier = HeaderModifier()
    rewrite: Rewrite | None = None
    redirect: Redirect | None = None
    request_timeout_ms: int = 0  # 0: none
    backend_timeout_ms: int = 0
    retry: Retry | None = None
    name: str = ""


@dataclass(frozen=True, slots=True)
class RouteParent:
    service: ServiceKey
    port: int = 0  # 0: every port of the Service


DEFAULT_ROUTE = "default"  # the `route` label of a request no route rule took


@dataclass(frozen=True, slots=True)
class Route:
    key: RouteKey
    parents: tuple[RouteParent, ...]
    rules: tuple[RouteRule, ...]
    hostnames: tuple[str, ...] = ()
    budget: RetryBudget = RetryBudget()
    # Gateway API precedence between routes: the oldest wins, then namespace/name.
    created: str = ""
    # Whether POST and PATCH may be retried (annotation nodemesh.io/retry-non-idempotent).
    retry_non_idempotent: bool = False

    def rule_label(self, index: int) -> str:
        """The `route` metric label of rule `index`: namespace/name of the route and the rule
        (its name if it has one, else its position). Routes are configuration, so the label's
        values are bounded; requests no rule takes are labelled DEFAULT_ROUTE."""
        rule = self.rules[index]
        return f"{self.key.namespace}/{self.key.name}/{rule.name or index}"
