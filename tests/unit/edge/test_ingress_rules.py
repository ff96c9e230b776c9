"""Ingress host and path matching as the Kubernetes Ingress spec defines it, and bad Ingresses
reported with the field that is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from ingress.spec import BadIngress, class_of, classes_served, read_ingress
from ingress.table import RouteTable


def ing(
    name: str,
    *,
    rules: list[Any] | None = None,
    default: str | None = None,
    created: str = "2026-01-01T00:00:00Z",
    ns: str = "shop",
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"ingressClassName": "nodemesh", **spec}
    if rules is not None:
        body["rules"] = rules
    if default:
        body["defaultBackend"] = {"service": {"name": default, "port": {"number": 80}}}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
            "spec": body}  # fmt: skip


def path(p: str, svc: str, kind: str = "Prefix", port: Any = 80) -> dict[str, Any]:
    ref = {"number": port} if isinstance(port, int) else {"name": port}
    return {"path": p, "pathType": kind, "backend": {"service": {"name": svc, "port": ref}}}


def rule(host: str | None, *paths: dict[str, Any]) -> dict[str, Any]:
    r: dict[str, Any] = {"http": {"paths": list(paths)}}
    if host is not None:
        r["host"] = host
    return r


def table(*objs: dict[str, Any]) -> RouteTable:
    return RouteTable([read_ingress(o) for o in objs])


def backend(t: RouteTable, host: str, p: str) -> str | None:
    m = t.match(host, p)
    return None if m is None else m.backend.service


# The Ingress spec's table of Prefix examples (kubernetes.io/docs/concepts/services-networking/
# ingress/#examples), each: rule path(s), request path, matched?
SPEC_EXAMPLES = [
    ("Prefix", "/", "/", True),
    ("Prefix", "/", "/anything/at/all", True),
    ("Exact", "/foo", "/foo", True),
    ("Exact", "/foo", "/bar", False),
    ("Exact", "/foo", "/foo/", False),
    ("Exact", "/foo/", "/foo", False),
    ("Prefix", "/foo", "/foo", True),
    ("Prefix", "/foo", "/foo/", True),
    ("Prefix", "/foo/", "/foo", True),
    ("Prefix", "/foo/", "/foo/", True),
    ("Prefix", "/aaa/bb", "/aaa/bbb", False),
    ("Prefix", "/aaa/bbb", "/aaa/bbb", True),
    ("Prefix", "/aaa/bbb/", "/aaa/bbb", True),
    ("Prefix", "/aaa/bbb", "/aaa/bbb/", True),
    ("Prefix", "/aaa/bbb", "/aaa/bbb/ccc", True),
    ("Prefix", "/aaa/bbb", "/aaa/bbbxyz", False),
    ("ImplementationSpecific", "/aaa", "/aaa/ccc", True),
    ("ImplementationSpecific", "/aaa", "/aaaccc", False),
]


@pytest.mark.parametrize(("kind", "rule_path", "request_path", "matched"), SPEC_EXAMPLES)
def test_the_specs_path_examples(kind: str, rule_path: str, request_path: str,
                                 matched: bool) -> None:  # fmt: skip
    t = table(ing("a", rules=[rule("shop.example", path(rule_path, "svc", kind))]))
    assert (backend(t, "shop.example", request_path) == "svc") is matched


def test_exact_beats_prefix_and_the_longest_prefix_wins() -> None:
    t = table(ing("a", rules=[rule("shop.example",
                                   path("/", "root"), path("/aaa", "short"),
                                   path("/aaa/bbb", "long"), path("/aaa/bbb", "exact", "Exact"))]))  # fmt: skip
    assert backend(t, "shop.example", "/aaa/bbb") == "exact"
    assert backend(t, "shop.example", "/aaa/bbb/c") == "long"
    assert backend(t, "shop.example", "/aaa/x") == "short"
    assert backend(t, "shop.example", "/z") == "root"


def test_hosts_exact_then_wildcard_then_any_and_port_and_case_ignored() -> None:
    t = table(ing("a", rules=[rule("foo.bar.com", path("/", "exact")),
                              rule("*.bar.com", path("/", "wild")),
                              rule(None, path("/only-here", "anyhost"))]))  # fmt: skip
    assert backend(t, "foo.bar.com", "/") == "exact"
    assert backend(t, "FOO.Bar.com:8080", "/") == "exact"
    assert backend(t, "baz.bar.com", "/") == "wild"
    assert backend(t, "bar.com", "/") is None  # the wildcard needs one more label
    assert backend(t, "a.baz.bar.com", "/") is None  # ... and exactly one
    assert backend(t, "other.example", "/only-here/x") == "anyhost"
    assert backend(t, "other.example", "/") is None


def test_default_backend_when_nothing_matches_and_404_without_one() -> None:
    t = table(ing("a", rules=[rule("shop.example", path("/api", "api"))], default="fallback"))
    assert backend(t, "shop.example", "/api/x") == "api"
    assert backend(t, "shop.example", "/web") == "fallback"
    assert backend(t, "unknown.example", "/") == "fallback"
    assert backend(table(ing("b", rules=[rule("shop.example", path("/", "x"))])),
                   "unknown.example", "/") is None  # fmt: skip


def test_the_older_ingress_wins_a_conflict() -> None:
    new = ing(
        "new", rules=[rule("shop.example", path("/", "newer"))], created="2026-02-01T00:00:00Z"
    )
    old = ing(
        "old", rules=[rule("shop.example", path("/", "older"))], created="2026-01-01T00:00:00Z"
    )
    assert backend(table(new, old), "shop.example", "/") == "older"
    # Rules of several Ingresses for one host merge: the newer one adds its own paths.
    extra = ing("extra", rules=[rule("shop.example", path("/cart", "cart"))], created="2026-03-01T00:00:00Z")  # fmt: skip
    assert backend(table(new, old, extra), "shop.example", "/cart/1") == "cart"


def test_backend_port_by_name_and_number() -> None:
    spec = read_ingress(ing("a", rules=[rule("h.example", path("/a", "s1", port="http"),
                                                       path("/b", "s2", port=8080))]))  # fmt: skip
    ports = [p.backend.port for p in spec.rules[0].paths]
    assert ports == ["http", 8080]


BAD = [
    (
        {
            "rules": [
                rule(
                    "h.example",
                    {
                        "path": "/",
                        "pathType": "Regex",
                        "backend": {"service": {"name": "s", "port": {"number": 80}}},
                    },
                )
            ]
        },
        "spec.rules[0].http.paths[0].pathType: 'Regex' is not one of Exact, Prefix, ImplementationSpecific",
    ),
    (
        {"rules": [rule("h.example", path("api", "s"))]},
        "spec.rules[0].http.paths[0].path: 'api' must be an absolute path",
    ),
    (
        {"rules": [rule("10.0.0.1", path("/", "s"))]},
        "spec.rules[0].host: '10.0.0.1': an Ingress host must be a DNS name, not an IP address",
    ),
    (
        {"rules": [rule("foo.*.com", path("/", "s"))]},
        "spec.rules[0].host: 'foo.*.com' is not a DNS name",
    ),
    (
        {"rules": [rule("h.example", path("/", "s", port=0))]},
        "spec.rules[0].http.paths[0].backend.service.port.number: 0 is not a port",
    ),
    (
        {
            "rules": [
                rule(
                    "h.example",
                    {
                        "path": "/",
                        "pathType": "Prefix",
                        "backend": {"service": {"name": "s", "port": {}}},
                    },
                )
            ]
        },
        "backend.service.port: exactly one of number and name is required",
    ),
    (
        {
            "rules": [
                rule(
                    "h.example",
                    {
                        "path": "/",
                        "pathType": "Prefix",
                        "backend": {"resource": {"kind": "Bucket", "name": "b"}},
                    },
                )
            ]
        },
        "backend.resource: resource backends are not supported",
    ),
    (
        {"rules": [{"host": "h.example", "http": {"paths": []}}]},
        "spec.rules[0].http.paths: required: at least one path",
    ),
    ({}, "spec: needs rules with paths or a defaultBackend"),
]


@pytest.mark.parametrize(("spec", "message"), BAD)
def test_bad_ingresses_name_the_field(spec: dict[str, Any], message: str) -> None:
    obj = ing("broken", **spec)
    with pytest.raises(BadIngress) as err:
        read_ingress(obj)
    assert str(err.value).startswith("Ingress shop/broken: ")
    assert message in str(err.value)


def test_classes_served() -> None:
    ours = {"metadata": {"name": "mesh-edge", "annotations": {
        "ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": "nodemesh.io/ingress"}}  # fmt: skip
    nginx = {"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}
    served = classes_served([ours, nginx])
    assert served == {"nodemesh", "mesh-edge", ""}
    assert classes_served([nginx]) == {"nodemesh"}
    old_style = {"metadata": {"annotations": {"kubernetes.io/ingress.class": "nginx"}}, "spec": {}}
    assert class_of(old_style) == "nginx"
