"""The `edge` step: once nodemesh-ingress is installed, each Ingress of another controller gets
a copy of class nodemesh (both controllers serve its hosts until DNS moves); undoing deletes
the copies; an Ingress nodemesh-ingress could not serve is named, not copied."""

from __future__ import annotations

from typing import Any

from nodemesh.migrate import plan as planning
from nodemesh.migrate.survey import survey
from tests.unit.migrate.cluster import applied, deployment, emojivoto

NOW = "2026-12-02T00:00:00+00:00"


def edge_step(objects: list[dict[str, Any]]) -> planning.Step:
    (st,) = [s for s in planning.plan(survey(objects), now=NOW) if s.id == "edge"]
    return st


def with_edge(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """emojivoto with nodemesh-ingress installed and web's Ingress given real rules."""
    out = [o for o in objects if o["kind"] != "Ingress"]
    out.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "web", "namespace": "emojivoto",
                             "annotations": {"kubernetes.io/ingress.class": "nginx",
                                             "team": "emoji"}},
                "spec": {"ingressClassName": "nginx", "rules": [{"host": "emoji.example", "http": {
                    "paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {
                        "name": "web-svc", "port": {"number": 80}}}}]}}]}})  # fmt: skip
    dep = deployment(
        "nodemesh-ingress", "nodemesh-ingress", image="ghcr.io/nodemesh/controlplane:0.1.0"
    )
    return [*out, dep]


def test_optional_until_nodemesh_ingress_is_installed() -> None:
    st = edge_step(emojivoto())
    assert st.state == planning.NOTHING and "nodemesh install --ingress" in st.why


def test_each_ingress_is_copied_for_nodemesh_and_undone_by_deleting_the_copy() -> None:
    objects = with_edge(emojivoto())
    st = edge_step(objects)
    assert st.state == planning.TODO
    (change,) = st.changes
    assert (change.kind, change.namespace, change.name, change.before) == (
        "Ingress", "emojivoto", "web-nodemesh", None)  # fmt: skip
    assert change.after is not None
    assert change.after["spec"]["ingressClassName"] == "nodemesh"
    assert change.after["metadata"]["annotations"] == {"team": "emoji"}  # old class key gone
    assert (
        change.after["spec"]["rules"]
        == next(o for o in objects if o["kind"] == "Ingress")["spec"]["rules"]
    )
    after = applied(objects, st.changes)
    # The original is untouched: the old controller keeps serving until DNS moves.
    assert [o for o in after if o["metadata"]["name"] == "web" and o["kind"] == "Ingress"] == [
        o for o in objects if o["kind"] == "Ingress"
    ]
    assert edge_step(after).state == planning.DONE
    assert applied(after, st.undo()) == objects


def test_an_ingress_nodemesh_cannot_serve_is_named() -> None:
    objects = [o for o in with_edge(emojivoto()) if o["kind"] != "Ingress"]
    objects.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                    "metadata": {"name": "bucket", "namespace": "emojivoto"},
                    "spec": {"ingressClassName": "nginx", "defaultBackend": {
                        "resource": {"apiGroup": "k8s.example.com", "kind": "Bucket", "name": "b"}}}})  # fmt: skip
    st = edge_step(objects)
    assert st.state == planning.BLOCKED and st.changes == []
    assert st.why == (
        "ingress/bucket -n emojivoto cannot be served by nodemesh-ingress: "
        "spec.defaultBackend.resource: resource backends are not supported; "
        "name a Service"
    )
