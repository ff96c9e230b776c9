"""HTTPRoute / GRPCRoute validation and compilation: errors name the field, defaults are filled."""

from __future__ import annotations

import copy

import pytest
from route_objects import grpc_route, http_route, split

from nodemesh.model import ServiceKey
from nodemesh.routing import codec
from nodemesh.routing.model import PathKind, RouteParent
from nodemesh.routing.spec import RouteError, compile_route, duration_ms


def test_a_split_compiles_to_weighted_backends_on_the_parent_service() -> None:
    route = compile_route(split("web-split", ("web-v1", 90), ("web-v2", 10)))
    assert route.parents == (RouteParent(ServiceKey("emojivoto", "web"), 80),)
    (rule,) = route.rules
    assert [(b.service.name, b.weight) for b in rule.backends] == [("web-v1", 90), ("web-v2", 10)]
    # No match given: every path (PathPrefix /), as Gateway API defaults it.
    assert [(m.path_kind, m.path) for m in rule.matches] == [(PathKind.PREFIX, "/")]


def test_timeouts_retry_filters_and_budget_annotations() -> None:
    obj = http_route(
        "web",
        annotations={
            "nodemesh.io/retry-budget-ratio": "0.1",
            "nodemesh.io/retry-budget-min-per-second": "0",
            "nodemesh.io/retry-non-idempotent": "true",
        },
        rules=[
            {
                "name": "api",
                "matches": [
                    {
                        "path": {"type": "PathPrefix", "value": "/api"},
                        "method": "GET",
                        "headers": [{"name": "X-Canary", "value": "yes"}],
                        "queryParams": [
                            {"type": "RegularExpression", "name": "v", "value": "[0-9]+"}
                        ],
                    }
                ],
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {
                            "set": [{"name": "X-Route", "value": "api"}],
                            "remove": ["X-Debug"],
                        },
                    },
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {
                            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}
                        },
                    },
                ],
                "backendRefs": [{"name": "web", "port": 80}],
                "timeouts": {"request": "1m30s", "backendRequest": "200ms"},
                "retry": {"codes": [503, 504], "attempts": 3, "backoff": "50ms"},
            }
        ],
    )
    route = compile_route(obj)
    rule = route.rules[0]
    assert rule.request_timeout_ms == 90_000 and rule.backend_timeout_ms == 200
    assert rule.retry is not None and rule.retry.codes == (503, 504) and rule.retry.attempts == 3
    assert rule.retry.backoff_ms == 50
    assert rule.request_headers.set == (("x-route", "api"),)
    assert rule.request_headers.remove == ("x-debug",)
    assert rule.rewrite is not None and rule.rewrite.path is not None
    assert route.budget.ratio == 0.1 and route.budget.min_per_second == 0
    assert route.retry_non_idempotent
    assert route.rule_label(0) == "emojivoto/web/api"
    # What the agent receives is what the control plane compiled.
    assert codec.route_from_pb(codec.route_to_pb(route)) == route


def test_grpc_method_matches_become_path_matches() -> None:
    route = compile_route(grpc_route("emoji"))
    (m,) = route.rules[0].matches
    assert (m.path_kind, m.path) == (PathKind.PREFIX, "/emojivoto.v1.EmojiService")
    obj = grpc_route("emoji")
    obj["spec"]["rules"][0]["matches"] = [
        {"method": {"service": "emojivoto.v1.EmojiService", "method": "ListAll"}}
    ]
    (m,) = compile_route(obj).rules[0].matches
    assert (m.path_kind, m.path) == (PathKind.EXACT, "/emojivoto.v1.EmojiService/ListAll")
    assert codec.route_from_pb(codec.route_to_pb(compile_route(obj))) == compile_route(obj)


def test_a_route_for_a_gateway_has_no_mesh_parent() -> None:
    obj = http_route("edge")
    obj["spec"]["parentRefs"] = [{"name": "my-gateway"}]  # kind defaults to Gateway
    assert compile_route(obj).parents == ()


def _bad(mutate) -> str:
    obj = http_route(
        "web",
        rules=[
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"name": "web", "port": 80}],
            }
        ],
    )
    obj = copy.deepcopy(obj)
    mutate(obj)
    with pytest.raises(RouteError) as info:
        compile_route(obj)
    return str(info.value)


def _modifies(side: str, how: str, name: str) -> dict:
    key = f"{side}HeaderModifier"
    item = name if how == "remove" else {"name": name, "value": "1"}
    return {"type": key[0].upper() + key[1:], key: {how: [item]}}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda o: o["spec"]["rules"][0]["backendRefs"][0].update(weight=-1),
            "spec.rules[0].backendRefs[0].weight: -1 is not a whole number",
        ),
        (
            lambda o: o["spec"]["rules"][0].update(timeouts={"request": "soon"}),
            "spec.rules[0].timeouts.request: 'soon' is not a duration",
        ),
        (
            lambda o: o["spec"]["rules"][0].update(
                timeouts={"request": "1s", "backendRequest": "2s"}
            ),
            "spec.rules[0].timeouts.backendRequest: 2s is longer than timeouts.request",
        ),
        (
            lambda o: o["spec"]["rules"][0]["matches"][0]["path"].update(value="api"),
            "spec.rules[0].matches[0].path.value: 'api' does not start with /",
        ),
        (
            lambda o: o["spec"]["rules"][0]["matches"][0].update(method="FETCH"),
            "spec.rules[0].matches[0].method: 'FETCH' is not one of",
        ),
        (
            lambda o: o["spec"]["rules"][0]["matches"][0].update(
                path={"type": "RegularExpression", "value": "/(unclosed"}
            ),
            "spec.rules[0].matches[0].path.value: '/(unclosed' is not a regular expression",
        ),
        (
            lambda o: o["spec"]["rules"][0].update(retry={"codes": [200]}),
            "spec.rules[0].retry.codes[0]: 200 is not an HTTP status from 400 to 599",
        ),
        (
            lambda o: o["spec"]["rules"][0].update(filters=[{"type": "RequestMirror"}]),
            "spec.rules[0].filters[0].type: 'RequestMirror' is not supported",
        ),
        (
            lambda o: o["spec"]["rules"][0].update(timeout="1s"),
            "spec.rules[0].timeout: unknown field",
        ),
        (
            lambda o: o["metadata"].update(annotations={"nodemesh.io/retry-budget-ratio": "2"}),
            "metadata.annotations[nodemesh.io/retry-budget-ratio]: '2' is not a number from 0 to 1",
        ),
        (
            lambda o: o["spec"]["parentRefs"][0].update(port=70000),
            "spec.parentRefs[0].port: 70000 is not a port number",
        ),
        # Framing headers: a body written with another length than the head's would be read
        # by the other side as (part of) a next message: request smuggling, a client desync.
        (
            lambda o: o["spec"]["rules"][0].update(
                filters=[_modifies("response", "set", "Content-Length")]
            ),
            "spec.rules[0].filters[0].responseHeaderModifier.set[0].name: 'Content-Length' frames",
        ),
        (
            lambda o: o["spec"]["rules"][0].update(
                filters=[_modifies("request", "add", "transfer-encoding")]
            ),
            "spec.rules[0].filters[0].requestHeaderModifier.add[0].name: 'transfer-encoding' frames",
        ),
        (
            lambda o: o["spec"]["rules"][0].update(
                filters=[_modifies("request", "remove", "content-length")]
            ),
            "spec.rules[0].filters[0].requestHeaderModifier.remove[0]: 'content-length' frames",
        ),
    ],
)
def test_bad_routes_name_the_field(mutate, expected) -> None:
    assert expected in _bad(mutate)


def test_durations() -> None:
    assert duration_ms("200ms", "f") == 200
    assert duration_ms("1h2m3s4ms", "f") == 3_723_004
    with pytest.raises(RouteError):
        duration_ms("1.5s", "f")
