"""Read an HTTPRoute or GRPCRoute (gateway.networking.k8s.io/v1) into a compiled `Route`.

Sans-io and shared: the lab validates with it before storing, the control plane compiles with it.
Every error names the field (`spec.rules[0].backendRefs[1].weight: ...`). Only parentRefs that
name a Service (GAMMA's mesh attachment) are kept; a route with none of them compiles to a route
with no parents, which nothing uses (it may be for a Gateway, which is not ours).
"""

from __future__ import annotations

import re
from typing import Any

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

GROUP = "gateway.networking.k8s.io"
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")
API_VERSIONS = (f"{GROUP}/v1", f"{GROUP}/v1beta1", f"{GROUP}/v1alpha2")
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
# Route annotations (docs/annotations.md), spelled out so the docs check finds them.
BUDGET_RATIO = "nodemesh.io/retry-budget-ratio"
BUDGET_MIN_PER_SECOND = "nodemesh.io/retry-budget-min-per-second"
BUDGET_TTL = "nodemesh.io/retry-budget-ttl"
RETRY_NON_IDEMPOTENT = "nodemesh.io/retry-non-idempotent"

_DURATION = re.compile(r"^([0-9]{1,5}(h|ms|m|s)){1,4}$")
_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class RouteError(ValueError):
    """A route resource is not valid; `field` is the path of what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.detail = field, message
        super().__init__(f"{field}: {message}")


def duration_ms(text: object, field: str) -> int:
    """A Gateway API duration (GEP-2257: `1h`, `500ms`, `1m30s`) in milliseconds."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise RouteError(field, f"{text!r} is not a duration such as 200ms, 10s or 1m30s")
    return sum(int(n) * _UNIT_MS[u] for n, u in _PART.findall(text))


def compile_route(obj: dict[str, Any]) -> Route:
    """Validate `obj` and return its compiled form; raises RouteError naming the field."""
    kind = obj.get("kind")
    if kind not in ROUTE_KINDS:
        raise RouteError("kind", f"{kind!r} is not HTTPRoute or GRPCRoute")
    if obj.get("apiVersion") not in API_VERSIONS:
        raise RouteError("apiVersion", f"{obj.get('apiVersion')!r} is not {API_VERSIONS[0]}")
    meta = _dict(obj.get("metadata"), "metadata")
    name, ns = meta.get("name"), meta.get("namespace") or "default"
    if not isinstance(name, str) or not name:
        raise RouteError("metadata.name", "required field is missing")
    spec = _dict(obj.get("spec"), "spec")
    grpc = kind == "GRPCRoute"
    parents = tuple(
        p
        for i, ref in enumerate(_list(spec.get("parentRefs"), "spec.parentRefs"))
        if (p := _parent(ref, f"spec.parentRefs[{i}]", ns)) is not None
    )
    hostnames = tuple(
        _str(h, f"spec.hostnames[{i}]")
        for i, h in enumerate(_list(spec.get("hostnames"), "spec.hostnames"))
    )
    rules_in = _list(spec.get("rules"), "spec.rules")
    if not rules_in:
        rules_in = [{}]  # no rules: every request to the parent's own backends
    rules = tuple(_rule(r, f"spec.rules[{i}]", ns, grpc=grpc) for i, r in enumerate(rules_in))
    annotations = meta.get("annotations") or {}
    return Route(
        key=RouteKey(kind, ns, name),
        parents=parents,
        rules=rules,
        hostnames=hostnames,
        budget=_budget(annotations),
        created=str(meta.get("creationTimestamp") or ""),
        retry_non_idempotent=_bool_annotation(annotations, RETRY_NON_IDEMPOTENT),
    )


def _parent(ref: object, field: str, ns: str) -> RouteParent | None:
    ref = _dict(ref, field)
    kind = ref.get("kind", "Gateway")
    group = ref.get("group", GROUP)
    name = ref.get("name")
    if not isinstance(name, str) or not name:
        raise RouteError(f"{field}.name", "required field is missing")
    if kind != "Service" or group not in ("", "core"):
        return None  # a Gateway or another parent: not a mesh route
    port = _port(ref.get("port", 0), f"{field}.port", allow_zero=True)
    pns = ref.get("namespace") or ns
    return RouteParent(ServiceKey(_str(pns, f"{field}.namespace"), name), port)


def _rule(rule: object, field: str, ns: str, *, grpc: bool) -> RouteRule:
    rule = _dict(rule, field)
    known = {"name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"}
    for key in rule:
        if key not in known:
            raise RouteError(f"{field}.{key}", f"unknown field (known: {', '.join(sorted(known))})")
    matches_in = _list(rule.get("matches"), f"{field}.matches")
    match_of = _grpc_match if grpc else _http_match
    matches = tuple(match_of(m, f"{field}.matches[{i}]") for i, m in enumerate(matches_in))
    if not matches:
        matches = (RouteMatch(PathKind.PREFIX, "/"),)
    backends = tuple(
        _backend(b, f"{field}.backendRefs[{i}]", ns)
        for i, b in enumerate(_list(rule.get("backendRefs"), f"{field}.backendRefs"))
    )
    req_h = resp_h = HeaderModifier()
    rewrite: Rewrite | None = None
    redirect: Redirect | None = None
    for i, flt in enumerate(_list(rule.get("filters"), f"{field}.filters")):
        ff = f"{field}.filters[{i}]"
        flt = _dict(flt, ff)
        ftype = flt.get("type")
        allowed: tuple[str, ...] = ("RequestHeaderModifier", "ResponseHeaderModifier")
        if not grpc:
            allowed += ("URLRewrite", "RequestRedirect")
        if ftype not in allowed:
            raise RouteError(f"{ff}.type", f"{ftype!r} is not supported (use {', '.join(allowed)})")
        key = ftype[0].lower() + ftype[1:]
        if ftype == "URLRewrite":
            key = "urlRewrite"
        body = _dict(flt.get(key), f"{ff}.{key}")
        if ftype == "RequestHeaderModifier":
            req_h = _modifier(body, f"{ff}.{key}")
        elif ftype == "ResponseHeaderModifier":
            resp_h = _modifier(body, f"{ff}.{key}")
        elif ftype == "URLRewrite":
            rewrite = Rewrite(
                hostname=_str(body.get("hostname", ""), f"{ff}.{key}.hostname"),
                path=_path_modifier(body.get("path"), f"{ff}.{key}.path", matches),
            )
        else:
            code = body.get("statusCode", 302)
            if code not in (301, 302, 303, 307, 308):
                raise RouteError(
                    f"{ff}.{key}.statusCode", f"{code!r} is not 301, 302, 303, 307 or 308"
                )
            scheme = body.get("scheme", "")
            if scheme not in ("", "http", "https"):
                raise RouteError(f"{ff}.{key}.scheme", f"{scheme!r} is not http or https")
            redirect = Redirect(
                scheme=scheme,
                hostname=_str(body.get("hostname", ""), f"{ff}.{key}.hostname"),
                path=_path_modifier(body.get("path"), f"{ff}.{key}.path", matches),
                port=_port(body.get("port", 0), f"{ff}.{key}.port", allow_zero=True),
                status_code=code,
            )
    if rewrite is not None and redirect is not None:
        raise RouteError(f"{field}.filters", "URLRewrite and RequestRedirect cannot be combined")
    if redirect is not None and backends:
        raise RouteError(f"{field}.backendRefs", "a rule with RequestRedirect has no backends")
    timeouts = _dict(rule.get("timeouts") or {}, f"{field}.timeouts")
    request_ms = backend_ms = 0
    if "request" in timeouts:
        request_ms = duration_ms(timeouts["request"], f"{field}.timeouts.request")
    if "backendRequest" in timeouts:
        backend_ms = duration_ms(timeouts["backendRequest"], f"{field}.timeouts.backendRequest")
    if request_ms and backend_ms > request_ms:
        raise RouteError(
            f"{field}.timeouts.backendRequest",
            f"{timeouts['backendRequest']} is longer than timeouts.request ({timeouts['request']})",
        )
    retry = None
    if rule.get("retry") is not None:
        retry = _retry(_dict(rule["retry"], f"{field}.retry"), f"{field}.retry")
    return RouteRule(
        matches=matches,
        backends=backends,
        request_headers=req_h,
        response_headers=resp_h,
        rewrite=rewrite,
        redirect=redirect,
        request_timeout_ms=request_ms,
        backend_timeout_ms=backend_ms,
        retry=retry,
        name=_str(rule.get("name", ""), f"{field}.name"),
    )


def _http_match(m: object, field: str) -> RouteMatch:
    m = _dict(m, field)
    path = _dict(m.get("path") or {"type": "PathPrefix", "value": "/"}, f"{field}.path")
    ptype = path.get("type", "PathPrefix")
    if ptype not in ("Exact", "PathPrefix", "RegularExpression"):
        raise RouteError(
            f"{field}.path.type", f"{ptype!r} is not Exact, PathPrefix or RegularExpression"
        )
    value = _str(path.get("value", "/"), f"{field}.path.value")
    if ptype == "RegularExpression":
        _regex(value, f"{field}.path.value")
    elif not value.startswith("/"):
        raise RouteError(f"{field}.path.value", f"{value!r} does not start with /")
    method = m.get("method", "")
    if method and method not in METHODS:
        raise RouteError(f"{field}.method", f"{method!r} is not one of {', '.join(METHODS)}")
    return RouteMatch(
        path_kind=PathKind(ptype),
        path=value,
        method=method,
        headers=_value_matches(m.get("headers"), f"{field}.headers"),
        query=_value_matches(m.get("queryParams"), f"{field}.queryParams"),
    )


def _grpc_match(m: object, field: str) -> RouteMatch:
    """gRPC's /package.Service/Method is the HTTP/2 :path, so a GRPCRoute method match is a
    path match: service and method -> exact; service only -> prefix; a regex -> a path regex."""
    m = _dict(m, field)
    headers = _value_matches(m.get("headers"), f"{field}.headers")
    if m.get("method") is None:
        return RouteMatch(PathKind.PREFIX, "/", headers=headers)
    meth = _dict(m["method"], f"{field}.method")
    mtype = meth.get("type", "Exact")
    service = _str(meth.get("service", ""), f"{field}.method.service")
    method = _str(meth.get("method", ""), f"{field}.method.method")
    if not service and not method:
        raise RouteError(f"{field}.method", "needs service, method or both")
    if mtype == "Exact":
        for part, name in ((service, "service"), (method, "method")):
            if "/" in part:
                raise RouteError(f"{field}.method.{name}", f"{part!r} must not contain /")
        if service and method:
            return RouteMatch(PathKind.EXACT, f"/{service}/{method}", headers=headers)
        if service:
            return RouteMatch(PathKind.PREFIX, f"/{service}", headers=headers)
        return RouteMatch(PathKind.REGEX, f"/[^/]+/{re.escape(method)}", headers=headers)
    if mtype == "RegularExpression":
        for part, name in ((service, "service"), (method, "method")):
            if part:
                _regex(part, f"{field}.method.{name}")
        regex = f"/{service or '[^/]+'}/{method or '[^/]+'}"
        return RouteMatch(PathKind.REGEX, regex, headers=headers)
    raise RouteError(f"{field}.method.type", f"{mtype!r} is not Exact or RegularExpression")


def _value_matches(items: object, field: str) -> tuple[ValueMatch, ...]:
    out = []
    for i, h in enumerate(_list(items, field)):
        hf = f"{field}[{i}]"
        h = _dict(h, hf)
        name = _str(h.get("name"), f"{hf}.name")
        if not name or not _HEADER_NAME.match(name):
            raise RouteError(f"{hf}.name", f"{name!r} is not a valid name")
        value = _str(h.get("value"), f"{hf}.value")
        mtype = h.get("type", "Exact")
        if mtype not in ("Exact", "RegularExpression"):
            raise RouteError(f"{hf}.type", f"{mtype!r} is not Exact or RegularExpression")
        if mtype == "RegularExpression":
            _regex(value, f"{hf}.value")
        out.append(ValueMatch(name, value, regex=mtype == "RegularExpression"))
    return tuple(out)


def _backend(b: object, field: str, ns: str) -> Backend:
    b = _dict(b, field)
    if b.get("kind", "Service") != "Service" or b.get("group", "") not in ("", "core"):
        raise RouteError(f"{field}.kind", f"{b.get('kind')!r}: only Service backends are supported")
    name = b.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RouteError(f"{field}.name", f"{name!r} is not a Service name")
    weight = b.get("weight", 1)
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 1_000_000:
        raise RouteError(f"{field}.weight", f"{weight!r} is not a whole number from 0 to 1000000")
    if b.get("filters"):
        raise RouteError(
            f"{field}.filters", "per-backend filters are not supported (put them on the rule)"
        )
    port = _port(b.get("port", 0), f"{field}.port", allow_zero=True)
    bns = _str(b.get("namespace") or ns, f"{field}.namespace")
    return Backend(ServiceKey(bns, name), port, weight)


def _not_framing(name: str, field: str) -> None:
    """The L7 path passes bodies on as they came: a head whose length said otherwise would
    have the other side read the rest as a next message (smuggling, a client desync)."""
    if name.lower() in ("content-length", "transfer-encoding"):
        raise RouteError(field, f"{name!r} frames the message body: the mesh keeps it as it came")


def _modifier(body: dict[str, Any], field: str) -> HeaderModifier:
    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        out = []
        for i, h in enumerate(_list(body.get(key), f"{field}.{key}")):
            hf = f"{field}.{key}[{i}]"
            h = _dict(h, hf)
            name = _str(h.get("name"), f"{hf}.name")
            if not _HEADER_NAME.match(name):
                raise RouteError(f"{hf}.name", f"{name!r} is not a valid header name")
            _not_framing(name, f"{hf}.name")
            out.append((name.lower(), _str(h.get("value"), f"{hf}.value")))
        return tuple(out)

    remove = tuple(
        _str(n, f"{field}.remove[{i}]").lower()
        for i, n in enumerate(_list(body.get("remove"), f"{field}.remove"))
    )
    for i, n in enumerate(remove):
        _not_framing(n, f"{field}.remove[{i}]")
    return HeaderModifier(set=pairs("set"), add=pairs("add"), remove=remove)


def _path_modifier(
    path: object, field: str, matches: tuple[RouteMatch, ...]
) -> PathModifier | None:
    if path is None:
        return None
    path = _dict(path, field)
    ptype = path.get("type")
    if ptype == "ReplaceFullPath":
        return PathModifier(ptype, _str(path.get("replaceFullPath"), f"{field}.replaceFullPath"))
    if ptype == "ReplacePrefixMatch":
        if any(m.path_kind is not PathKind.PREFIX for m in matches):
            raise RouteError(
                f"{field}.type", "ReplacePrefixMatch needs every match to be a PathPrefix"
            )
        return PathModifier(
            ptype, _str(path.get("replacePrefixMatch"), f"{field}.replacePrefixMatch")
        )
    raise RouteError(f"{field}.type", f"{ptype!r} is not ReplaceFullPath or ReplacePrefixMatch")


def _retry(body: dict[str, Any], field: str) -> Retry:
    codes = []
    for i, c in enumerate(_list(body.get("codes"), f"{field}.codes")):
        if not isinstance(c, int) or isinstance(c, bool) or not 400 <= c <= 599:
            raise RouteError(f"{field}.codes[{i}]", f"{c!r} is not an HTTP status from 400 to 599")
        codes.append(c)
    attempts = body.get("attempts", 1)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or not 0 <= attempts <= 10:
        raise RouteError(f"{field}.attempts", f"{attempts!r} is not a whole number from 0 to 10")
    backoff = duration_ms(body["backoff"], f"{field}.backoff") if "backoff" in body else 0
    return Retry(codes=tuple(codes) or (503,), attempts=attempts, backoff_ms=backoff)


def _budget(annotations: dict[str, Any]) -> RetryBudget:
    default = RetryBudget()
    field = f"metadata.annotations[{BUDGET_RATIO}]"
    ratio_text = annotations.get(BUDGET_RATIO)
    ratio = default.ratio
    if ratio_text is not None:
        try:
            ratio = float(ratio_text)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise RouteError(field, f"{ratio_text!r} is not a number from 0 to 1")
    floor_text = annotations.get(BUDGET_MIN_PER_SECOND)
    floor = default.min_per_second
    if floor_text is not None:
        if not str(floor_text).isdigit() or int(floor_text) > 10_000:
            raise RouteError(
                f"metadata.annotations[{BUDGET_MIN_PER_SECOND}]",
                f"{floor_text!r} is not a whole number from 0 to 10000",
            )
        floor = int(floor_text)
    ttl_text = annotations.get(BUDGET_TTL)
    ttl = default.ttl_s
    if ttl_text is not None:
        ttl = max(
            1,
            duration_ms(ttl_text, f"metadata.annotations[{BUDGET_TTL}]") // 1000,
        )
    return RetryBudget(ratio=ratio, min_per_second=floor, ttl_s=ttl)


def _bool_annotation(annotations: dict[str, Any], name: str) -> bool:
    value = annotations.get(name)
    if value is None:
        return False
    if value not in ("true", "false"):
        raise RouteError(f"metadata.annotations[{name}]", f"{value!r} is not true or false")
    return value == "true"


def _regex(value: str, field: str) -> None:
    try:
        re.compile(value)
    except re.error as e:
        raise RouteError(field, f"{value!r} is not a regular expression: {e}") from None


def _port(value: object, field: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 65535:
        raise RouteError(field, f"{value!r} is not a port number from 1 to 65535")
    return value


def _dict(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RouteError(
            field, "must be a mapping" if value is not None else "required field is missing"
        )
    return value


def _list(value: object, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RouteError(field, "must be a list")
    return value


def _str(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise RouteError(
            field, "must be a string" if value is not None else "required field is missing"
        )
    return value
