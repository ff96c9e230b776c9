"""`nodemesh lab apply -f` of Ingress objects: stored as a cluster stores them (IngressClass
cluster-scoped), and an Ingress of class nodemesh that nodemesh-ingress could not serve
refused with the file, the object and the field."""

from __future__ import annotations

import pytest

from nodemesh.lab.manifests import ManifestError, parse

INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nodemesh}
spec: {controller: nodemesh.io/ingress}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  ingressClassName: CLASS
  rules:
  - host: shop.example
    http:
      paths:
      - {path: PATH, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"""


def test_ingress_and_its_class_are_applied() -> None:
    ms = parse(INGRESS.replace("CLASS", "nodemesh").replace("PATH", "/"), source="ing.yml")
    assert [str(m.ref) for m in ms] == ["IngressClass nodemesh", "Ingress shop/shop"]


def test_a_bad_ingress_of_class_nodemesh_is_refused_with_its_field() -> None:
    with pytest.raises(ManifestError) as e:
        parse(INGRESS.replace("CLASS", "nodemesh").replace("PATH", "web"), source="ing.yml")
    assert str(e.value) == (
        "ing.yml: document 2 (Ingress shop): spec.rules[0].http.paths[0].path: 'web' must be "
        "an absolute path (start with '/')"
    )


def test_another_controllers_ingress_is_stored_unchecked() -> None:
    ms = parse(INGRESS.replace("CLASS", "nginx").replace("PATH", "web"), source="ing.yml")
    assert [str(m.ref) for m in ms][1] == "Ingress shop/shop"
