"""Rule precedence, weighted backend choice and the retry budget (all sans-io)."""

from __future__ import annotations

import random

from route_objects import http_route, split

from nodemesh.model import ServiceKey
from nodemesh.routing.budget import Budget
from nodemesh.routing.model import RetryBudget
from nodemesh.routing.spec import compile_route
from nodemesh.routing.table import RouteTable, pick_backend, rewrite_path

WEB = ServiceKey("emojivoto", "web")


def _select(table: RouteTable, path: str, method: str = "GET", **headers: str):
    path, _, qs = path.partition("?")
    query = dict(p.split("=", 1) for p in qs.split("&") if p)
    return table.select(WEB, 80, method=method, path=path, headers=headers, query=query)


def _rule(name: str, match: dict) -> dict:
    return {"name": name, "matches": [match], "backendRefs": [{"name": "web"}]}


def test_precedence_exact_then_regex_then_longest_prefix_then_method_headers_query() -> None:
    table = RouteTable()
    table.replace(
        [
            compile_route(
                http_route(
                    "web",
                    rules=[
                        _rule("root", {"path": {"type": "PathPrefix", "value": "/"}}),
                        _rule("api", {"path": {"type": "PathPrefix", "value": "/api"}}),
                        _rule("api-v1", {"path": {"type": "PathPrefix", "value": "/api/v1/"}}),
                        _rule("health", {"path": {"type": "Exact", "value": "/api/health"}}),
                        _rule(
                            "ids", {"path": {"type": "RegularExpression", "value": "/api/[0-9]+"}}
                        ),
                        _rule(
                            "post",
                            {"path": {"type": "PathPrefix", "value": "/api"}, "method": "POST"},
                        ),
                        _rule(
                            "canary",
                            {
                                "path": {"type": "PathPrefix", "value": "/api"},
                                "headers": [{"name": "x-canary", "value": "1"}],
                            },
                        ),
                        _rule(
                            "q",
                            {
                                "path": {"type": "PathPrefix", "value": "/api"},
                                "queryParams": [{"name": "debug", "value": "1"}],
                            },
                        ),
                    ],
                )
            )
        ]
    )
    names = {
        "/": "root",
        "/apix": "root",  # prefixes match whole path elements
        "/api": "api",
        "/api/x": "api",
        "/api/v1/things": "api-v1",
        "/api/health": "health",
        "/api/42": "ids",
        "/api/x?debug=1": "q",
    }
    for path, rule in names.items():
        sel = _select(table, path)
        assert sel is not None and sel.rule.name == rule, path
    assert _select(table, "/api/x", "POST").rule.name == "post"
    assert _select(table, "/api/x", **{"x-canary": "1"}).rule.name == "canary"
    assert _select(table, "/api/x").label == "emojivoto/web/api"


def test_older_route_wins_a_tie_and_no_match_is_none() -> None:
    older = http_route(
        "b-older",
        created="2026-01-01T00:00:00Z",
        rules=[_rule("r", {"path": {"type": "Exact", "value": "/x"}})],
    )
    newer = http_route(
        "a-newer",
        created="2026-06-01T00:00:00Z",
        rules=[_rule("r", {"path": {"type": "Exact", "value": "/x"}})],
    )
    table = RouteTable()
    table.replace([compile_route(newer), compile_route(older)])
    assert _select(table, "/x").route.key.name == "b-older"
    assert _select(table, "/y") is None
    assert table.routed(WEB, 80) and not table.routed(WEB, 81)
    table.remove(compile_route(older).key)
    assert _select(table, "/x").route.key.name == "a-newer"  # not what was chosen before
    table.remove(compile_route(newer).key)
    assert _select(table, "/x") is None
    assert not table.routed(WEB, 80)


def test_weights_split_requests_in_proportion() -> None:
    rule = compile_route(split("s", ("web-v1", 90), ("web-v2", 10))).rules[0]
    rng = random.Random(7)
    picks = [pick_backend(rule.backends, rng.random).service.name for _ in range(20_000)]
    share = picks.count("web-v2") / len(picks)
    assert 0.09 < share < 0.11
    zero = compile_route(split("s", ("web-v1", 0), ("web-v2", 0))).rules[0]
    assert pick_backend(zero.backends, rng.random) is None
    only_v2 = compile_route(split("s", ("web-v1", 0), ("web-v2", 5))).rules[0]
    assert {pick_backend(only_v2.backends, rng.random).service.name for _ in range(200)} == {
        "web-v2"
    }


def test_prefix_rewrite_keeps_the_rest_of_the_path() -> None:
    rule = compile_route(
        http_route("w", rules=[_rule("r", {"path": {"type": "PathPrefix", "value": "/old/"}})])
    ).rules[0]
    m = rule.matches[0]
    assert rewrite_path("/old/a/b", m, "ReplacePrefixMatch", "/new") == "/new/a/b"
    assert rewrite_path("/old", m, "ReplacePrefixMatch", "/") == "/"
    assert rewrite_path("/old/a", m, "ReplaceFullPath", "/fixed") == "/fixed"


def test_budget_caps_retries_at_its_ratio_plus_floor() -> None:
    budget = Budget(RetryBudget(ratio=0.2, min_per_second=0, ttl_s=10))
    allowed = 0
    # 100 % failing: every request asks for a retry; 50 requests a second for 20 seconds.
    for i in range(1000):
        now = i / 50
        budget.request(now)
        allowed += budget.try_retry(now)
    assert 190 <= allowed <= 200  # 20 % of requests, never more
    assert budget.refused == 1000 - allowed

    floor = Budget(RetryBudget(ratio=0.0, min_per_second=10, ttl_s=1))
    granted = sum(floor.try_retry(0.5) for _ in range(50))
    assert granted == 10  # only the floor, with no requests to earn more
    assert floor.try_retry(1.5)  # the window moved on
