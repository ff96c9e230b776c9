"""From objects to what the edge serves: backends resolved to Service addresses (503 with the
reason when they cannot be reached), bad Ingresses and bad TLS Secrets left out with a clear
problem, certificates picked by SNI."""

from __future__ import annotations

import base64
from typing import Any

from ingress.state import Objects, Refusal, Upstream
from tests.unit.edge.certgen import CA, tls_secret
from tests.unit.edge.test_ingress_rules import ing, path, rule


def service(
    name: str, ip: str = "10.96.0.10", ports: Any = None, ns: str = "shop"
) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports or [{"name": "http", "port": 80}]}}  # fmt: skip


def slice_of(svc: str, *, ready: bool = True, ns: str = "shop") -> dict[str, Any]:
    return {"kind": "EndpointSlice",
            "metadata": {"name": f"{svc}-x", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc}},
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": ready}}]}  # fmt: skip


def objects(*objs: dict[str, Any]) -> Objects:
    o = Objects()
    for obj in objs:
        o.put(obj["kind"], obj)
    return o


def test_backends_resolve_to_the_service_vip_by_port_number_or_name() -> None:
    o = objects(
        ing("a", rules=[rule("shop.example", path("/web", "web", port="http"),
                             path("/api", "api", port=8080))]),
        service("web", "10.96.0.10"), slice_of("web"),
        service("api", "10.96.0.11", [{"name": "grpc", "port": 9090}, {"port": 8080}]),
        slice_of("api"),
    )  # fmt: skip
    snap = o.snapshot()
    assert snap.problems == []
    assert snap.route("shop.example", "/web/x")[1] == Upstream("10.96.0.10", 80, "shop/web:http")
    assert snap.route("shop.example", "/api")[1] == Upstream("10.96.0.11", 8080, "shop/api:8080")


def test_no_match_is_404_and_unreachable_backends_are_503_with_the_reason() -> None:
    o = objects(
        ing("a", rules=[rule("shop.example", path("/empty", "empty"), path("/gone", "gone"),
                             path("/badport", "web", port=81), path("/web", "web"))]),
        service("empty"), slice_of("empty", ready=False), service("web"), slice_of("web"),
    )  # fmt: skip
    snap = o.snapshot()
    assert snap.route("other.example", "/")[1] == Refusal(
        404, "no Ingress rule matches this host and path"
    )
    assert snap.route("shop.example", "/empty")[1] == Refusal(
        503, "Service shop/empty has no ready endpoints"
    )
    assert snap.route("shop.example", "/gone")[1] == Refusal(503, "Service shop/gone not found")
    assert snap.route("shop.example", "/badport")[1] == Refusal(
        503, "Service shop/web has no port 81"
    )
    assert isinstance(snap.route("shop.example", "/web")[1], Upstream)


def test_only_ingresses_of_our_class_are_served_and_a_bad_one_does_not_stop_the_others() -> None:
    other = ing("nginx", rules=[rule("n.example", path("/", "web"))], ingressClassName="nginx")
    bad = ing("bad", rules=[rule("b.example", path("nope", "web"))])
    good = ing("good", rules=[rule("g.example", path("/", "web"))])
    snap = objects(other, bad, good, service("web"), slice_of("web")).snapshot()
    assert snap.ingresses == 1
    assert snap.route("n.example", "/")[1].status == 404  # type: ignore[union-attr]
    assert isinstance(snap.route("g.example", "/")[1], Upstream)
    assert snap.problems == [
        "Ingress shop/bad: spec.rules[0].http.paths[0].path: 'nope' must be an absolute path "
        "(start with '/'); this Ingress is not served"
    ]


def test_certificates_by_sni_and_bad_secrets_reported_not_fatal() -> None:
    ca = CA()
    shop_crt, shop_key = ca.issue("shop.example")
    wild_crt, wild_key = ca.issue("*.apps.example")
    _, other_key = ca.issue("other.example")
    broken = tls_secret("shop", "mismatch", shop_crt, other_key)
    garbage = tls_secret("shop", "garbage", b"not a cert", shop_key)
    opaque = {**tls_secret("shop", "opaque", shop_crt, shop_key), "type": "Opaque"}
    nokey = tls_secret("shop", "nokey", shop_crt, shop_key)
    del nokey["data"]["tls.key"]  # type: ignore[attr-defined]
    tls = [
        {"hosts": ["shop.example"], "secretName": "shop-tls"},
        {"hosts": ["*.apps.example"], "secretName": "wild-tls"},
        {"hosts": ["m.example"], "secretName": "mismatch"},
        {"hosts": ["g.example"], "secretName": "garbage"},
        {"hosts": ["o.example"], "secretName": "opaque"},
        {"hosts": ["k.example"], "secretName": "nokey"},
        {"hosts": ["x.example"], "secretName": "absent"},
    ]
    snap = objects(
        ing("a", rules=[rule("shop.example", path("/", "web"))], tls=tls),
        tls_secret("shop", "shop-tls", shop_crt, shop_key),
        tls_secret("shop", "wild-tls", wild_crt, wild_key),
        broken, garbage, opaque, nokey, service("web"), slice_of("web"),
    ).snapshot()  # fmt: skip
    assert snap.cert_for("shop.example").secret == "shop/shop-tls"  # type: ignore[union-attr]
    assert snap.cert_for("a.apps.example").secret == "shop/wild-tls"  # type: ignore[union-attr]
    assert snap.cert_for(None).secret == "shop/shop-tls"  # type: ignore[union-attr]
    assert snap.cert_for("m.example").secret == "shop/shop-tls"  # default, not the bad one
    problems = "\n".join(snap.problems)
    assert (
        "spec.tls[2]: Secret shop/mismatch: tls.key does not belong to the first certificate of tls.crt; m.example served over HTTP only"
        in problems
    )
    assert "spec.tls[3]: Secret shop/garbage: tls.crt is not a PEM certificate" in problems
    assert "spec.tls[4]: Secret shop/opaque is of type 'Opaque', not kubernetes.io/tls" in problems
    assert "spec.tls[5]: Secret shop/nokey: data[tls.key] is missing" in problems
    assert "spec.tls[6]: Secret shop/absent not found; x.example served over HTTP only" in problems
    assert len(snap.problems) == 5
    # The routes themselves are served whatever the Secrets hold.
    assert isinstance(snap.route("shop.example", "/")[1], Upstream)


def test_a_secret_that_is_not_base64() -> None:
    s = tls_secret("shop", "b64", b"x", b"y")
    s["data"] = {"tls.crt": "%%%", "tls.key": base64.b64encode(b"k").decode()}
    snap = objects(ing("a", rules=[rule("h.example", path("/", "web"))],
                       tls=[{"secretName": "b64"}]), s).snapshot()  # fmt: skip
    assert snap.problems and "Secret shop/b64: data[tls.crt] is not base64" in snap.problems[0]
    assert "h.example served over HTTP only" in snap.problems[0]
