"""The lab accepts HTTPRoute and GRPCRoute; a bad one names the file, the object and the field."""

from __future__ import annotations

import pytest

from nodemesh.lab.manifests import ManifestError, parse

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - backendRefs:
    - {name: web-v1, port: 80, weight: 90}
    - {name: web-v2, port: 80, weight: 10}
    timeouts: {request: 200ms}
"""
GRPC = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: emoji, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: emoji-svc, port: 8080}]
  rules:
  - matches: [{method: {service: emojivoto.v1.EmojiService}}]
    backendRefs: [{name: emoji-svc, port: 8080}]
"""


def test_routes_are_accepted() -> None:
    ms = parse("---\n".join([ROUTE, GRPC]), source="routes.yml")
    assert [str(m.ref) for m in ms] == ["HTTPRoute shop/web-split", "GRPCRoute shop/emoji"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("weight: 10}", "weight: ten}", "spec.rules[0].backendRefs[1].weight: 'ten' is not"),
        ("request: 200ms", "request: 0.2s", "spec.rules[0].timeouts.request: '0.2s' is not a"),
        ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v9", "apiVersion:"),
    ],
)
def test_a_bad_route_names_file_object_and_field(old: str, new: str, expected: str) -> None:
    with pytest.raises(ManifestError) as e:
        parse(ROUTE.replace(old, new), source="routes.yml")
    assert str(e.value).startswith("routes.yml: document 1 (HTTPRoute web-split): ")
    assert expected in str(e.value)
