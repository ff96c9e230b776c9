"""Gateway API at the edge: a Gateway of class nodemesh and the HTTPRoutes attached to it are
served like Ingresses (hostnames, PathPrefix/Exact, one Service backend, HTTPS listener
certificates); what is not served yet is named with its field, never a crash."""

from __future__ import annotations

from typing import Any

from ingress.state import Objects, Refusal, Upstream
from tests.unit.edge.certgen import CA, tls_secret
from tests.unit.edge.test_ingress_state import service, slice_of


def gateway(name: str = "edge", cls: str = "nodemesh", **listener: Any) -> dict[str, Any]:
    listeners = [{"name": "http", "port": 80, "protocol": "HTTP"}]
    if listener:
        listeners.append({"name": "https", "port": 443, "protocol": "HTTPS", **listener})
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"gatewayClassName": cls, "listeners": listeners}}  # fmt: skip


def route(name: str, *rules: dict[str, Any], parent: str = "edge", hosts: tuple[str, ...] = ("gw.example",),
          kind: str | None = None) -> dict[str, Any]:  # fmt: skip
    ref: dict[str, Any] = {"name": parent}
    if kind:
        ref["kind"] = kind
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"parentRefs": [ref], "hostnames": list(hosts), "rules": list(rules)}}  # fmt: skip


def to(svc: str, port: int = 80, *paths: tuple[str, str], **extra: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"backendRefs": [{"name": svc, "port": port}], **extra}
    if paths:
        rule["matches"] = [{"path": {"type": t, "value": v}} for t, v in paths]
    return rule


def snap(*objs: dict[str, Any]) -> Any:
    o = Objects()
    for obj in (service("web", "10.96.0.10"), slice_of("web"),
                service("api", "10.96.0.11"), slice_of("api"), *objs):  # fmt: skip
        o.put(obj["kind"], obj)
    return o.snapshot()


def test_routes_attached_to_our_gateway_are_served() -> None:
    s = snap(gateway(), route("r", to("api", 80, ("PathPrefix", "/api"), ("Exact", "/v1")),
                              to("web")))  # fmt: skip
    assert s.problems == []
    assert s.route("gw.example", "/api/x")[1] == Upstream("10.96.0.11", 80, "shop/api:80")
    assert s.route("gw.example", "/v1")[1] == Upstream("10.96.0.11", 80, "shop/api:80")
    assert s.route("gw.example", "/v1/x")[1] == Upstream("10.96.0.10", 80, "shop/web:80")
    assert s.route("other.example", "/")[1] == Refusal(
        404, "no Ingress rule matches this host and path"
    )


def test_other_classes_and_mesh_routes_are_not_ours() -> None:
    # Another class's Gateway; and a GAMMA route whose parent is a Service (the mesh's).
    s = snap(gateway(cls="istio"), route("r", to("web")),
             route("mesh", to("web"), parent="web", kind="Service"))  # fmt: skip
    assert s.ingresses == 0 and s.route("gw.example", "/")[1].status == 404


def test_https_listener_certificates() -> None:
    ca = CA()
    crt, key = ca.issue("gw.example")
    s = snap(gateway(hostname="gw.example", tls={"certificateRefs": [{"name": "gw-tls"}]}),
             tls_secret("shop", "gw-tls", crt, key), route("r", to("web")))  # fmt: skip
    assert s.cert_for("gw.example").secret == "shop/gw-tls"


def test_what_is_not_served_yet_is_named() -> None:
    s = snap(
        gateway(),
        route("split", {"backendRefs": [{"name": "web", "port": 80, "weight": 90},
                                        {"name": "api", "port": 80, "weight": 10}]}),
        route("hdr", to("web", 80, matches=[{"headers": [{"name": "x", "value": "y"}]}])),
        route("filt", to("web", 80, filters=[{"type": "RequestHeaderModifier"}])),
        route("regex", to("web", 80, ("RegularExpression", "/a.*"))),
        route("ok", to("web"), hosts=("ok.example",)),
    )  # fmt: skip
    assert sorted(s.problems) == [
        "HTTPRoute shop/filt: spec.rules[0].filters: filters are not served at the edge yet; "
        "this HTTPRoute is not served",
        "HTTPRoute shop/hdr: spec.rules[0].matches[0]: headers matches are not served at the "
        "edge yet; this HTTPRoute is not served",
        "HTTPRoute shop/regex: spec.rules[0].matches[0].path.type: 'RegularExpression' is not "
        "served (PathPrefix, Exact); this HTTPRoute is not served",
        "HTTPRoute shop/split: spec.rules[0].backendRefs: exactly one backendRef is served at "
        "the edge (weighted splits are not yet), not 2; this HTTPRoute is not served",
    ]
    assert isinstance(s.route("ok.example", "/")[1], Upstream)
