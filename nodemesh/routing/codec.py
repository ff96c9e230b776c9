"""Compiled routes to and from destination.proto (both ends of the destination stream)."""

from __future__ import annotations

from nodemesh.api import destination_pb2 as pb
from nodemesh.model import ServiceKey
from nodemesh.routing.model import (
    Backend,
    HeaderModifier,
    PathKind,
    PathModifier,
    Redirect,
    Retry,
    RetryBudget,
    Rewrite,
    Route,
    RouteKey,
    RouteMatch,
    RouteParent,
    RouteRule,
    ValueMatch,
)


def route_key_to_pb(k: RouteKey) -> pb.RouteKey:
    return pb.RouteKey(kind=k.kind, namespace=k.namespace, name=k.name)


def route_key_from_pb(k: pb.RouteKey) -> RouteKey:
    return RouteKey(k.kind, k.namespace, k.name)


def _svc(k: ServiceKey) -> pb.ServiceKey:
    return pb.ServiceKey(namespace=k.namespace, name=k.name)


def _svc_back(k: pb.ServiceKey) -> ServiceKey:
    return ServiceKey(k.namespace, k.name)


def _values(vs: tuple[ValueMatch, ...]) -> list[pb.ValueMatch]:
    return [pb.ValueMatch(name=v.name, value=v.value, regex=v.regex) for v in vs]


def _values_back(vs: list[pb.ValueMatch]) -> tuple[ValueMatch, ...]:
    return tuple(ValueMatch(v.name, v.value, v.regex) for v in vs)


def _modifier(m: HeaderModifier) -> pb.HeaderModifier:
    return pb.HeaderModifier(
        set=[pb.Header(name=n, value=v) for n, v in m.set],
        add=[pb.Header(name=n, value=v) for n, v in m.add],
        remove=list(m.remove),
    )


def _modifier_back(m: pb.HeaderModifier) -> HeaderModifier:
    return HeaderModifier(
        set=tuple((h.name, h.value) for h in m.set),
        add=tuple((h.name, h.value) for h in m.add),
        remove=tuple(m.remove),
    )


def _path(p: PathModifier | None) -> pb.PathModifier | None:
    return None if p is None else pb.PathModifier(kind=p.kind, value=p.value)


def _path_back(msg: object, p: pb.PathModifier) -> PathModifier | None:
    return PathModifier(p.kind, p.value) if msg.HasField("path") else None  # type: ignore[attr-defined]


def rule_to_pb(r: RouteRule) -> pb.RouteRule:
    out = pb.RouteRule(
        matches=[
            pb.RouteMatch(
                path_kind=m.path_kind.value,
                path=m.path,
                method=m.method,
                headers=_values(m.headers),
                query=_values(m.query),
            )
            for m in r.matches
        ],
        backends=[
            pb.RouteBackend(service=_svc(b.service), port=b.port, weight=b.weight)
            for b in r.backends
        ],
        request_headers=_modifier(r.request_headers),
        response_headers=_modifier(r.response_headers),
        request_timeout_ms=r.request_timeout_ms,
        backend_timeout_ms=r.backend_timeout_ms,
        name=r.name,
    )
    if r.rewrite is not None:
        out.rewrite.CopyFrom(pb.Rewrite(hostname=r.rewrite.hostname, path=_path(r.rewrite.path)))
    if r.redirect is not None:
        d = r.redirect
        out.redirect.CopyFrom(
            pb.Redirect(
                scheme=d.scheme,
                hostname=d.hostname,
                path=_path(d.path),
                port=d.port,
                status_code=d.status_code,
            )
        )
    if r.retry is not None:
        out.retry.CopyFrom(
            pb.Retry(
                codes=list(r.retry.codes), attempts=r.retry.attempts, backoff_ms=r.retry.backoff_ms
            )
        )
    return out


def rule_from_pb(r: pb.RouteRule) -> RouteRule:
    return RouteRule(
        matches=tuple(
            RouteMatch(
                PathKind(m.path_kind),
                m.path,
                m.method,
                _values_back(m.headers),
                _values_back(m.query),
            )
            for m in r.matches
        ),
        backends=tuple(Backend(_svc_back(b.service), b.port, b.weight) for b in r.backends),
        request_headers=_modifier_back(r.request_headers),
        response_headers=_modifier_back(r.response_headers),
        rewrite=Rewrite(r.rewrite.hostname, _path_back(r.rewrite, r.rewrite.path))
        if r.HasField("rewrite")
        else None,
        redirect=Redirect(
            r.redirect.scheme,
            r.redirect.hostname,
            _path_back(r.redirect, r.redirect.path),
            r.redirect.port,
            r.redirect.status_code,
        )
        if r.HasField("redirect")
        else None,
        request_timeout_ms=r.request_timeout_ms,
        backend_timeout_ms=r.backend_timeout_ms,
        retry=Retry(tuple(r.retry.codes), r.retry.attempts, r.retry.backoff_ms)
        if r.HasField("retry")
        else None,
        name=r.name,
    )


def route_to_pb(r: Route) -> pb.Route:
    return pb.Route(
        key=route_key_to_pb(r.key),
        parents=[pb.RouteParent(service=_svc(p.service), port=p.port) for p in r.parents],
        rules=[rule_to_pb(rule) for rule in r.rules],
        hostnames=list(r.hostnames),
        budget=pb.RetryBudget(
            ratio=r.budget.ratio, min_per_second=r.budget.min_per_second, ttl_s=r.budget.ttl_s
        ),
        created=r.created,
        retry_non_idempotent=r.retry_non_idempotent,
    )


def route_from_pb(r: pb.Route) -> Route:
    return Route(
        key=route_key_from_pb(r.key),
        parents=tuple(RouteParent(_svc_back(p.service), p.port) for p in r.parents),
        rules=tuple(rule_from_pb(rule) for rule in r.rules),
        hostnames=tuple(r.hostnames),
        budget=RetryBudget(r.budget.ratio, r.budget.min_per_second, r.budget.ttl_s),
        created=r.created,
        retry_non_idempotent=r.retry_non_idempotent,
    )
