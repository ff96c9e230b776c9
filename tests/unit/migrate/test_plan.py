"""The adoption planner: what it finds, the steps it orders, and that each step undoes."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nodemesh.migrate import plan as planning
from nodemesh.migrate.survey import SurveyError, WorkloadRef, survey
from tests.unit.migrate.cluster import applied, deployment, emojivoto, namespace

NOW = "2026-12-02T00:00:00+00:00"


def states(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {s.id: s.state for s in planning.plan(survey(objects), now=NOW)}


def step(objects: list[dict[str, Any]], step_id: str, **kw: Any) -> planning.Step:
    return planning.step_to_apply(planning.plan(survey(objects), now=NOW, **kw), step_id)


def template(objects: list[dict[str, Any]], ns: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == "Deployment"
              and o["metadata"]["name"] == name and o["metadata"]["namespace"] == ns]  # fmt: skip
    return obj["spec"]["template"]  # type: ignore[no-any-return]


def test_survey_finds_the_ingress_the_router_and_who_uses_it() -> None:
    s = survey(emojivoto())
    assert set(s.namespaces) == {"ingress-nginx", "emojivoto"}  # system namespaces left out
    assert s.ingress_controllers == [
        WorkloadRef("Deployment", "ingress-nginx", "ingress-nginx-controller")
    ]
    (router,) = s.routers.values()
    assert router.name == "emojivoto/router"
    assert router.workloads == (WorkloadRef("Deployment", "emojivoto", "router"),)
    assert router.routes == {8081: "emoji-svc.emojivoto:8080", 8082: "voting-svc.emojivoto:8080"}
    # Both spellings of the Service's name; vote-bot's WEB_HOST names the ingress, no router.
    assert sorted((u.workload.name, u.env) for u in s.uses) == [
        ("web", "EMOJISVC_HOST"), ("web", "VOTINGSVC_HOST")]  # fmt: skip
    emoji_ns = s.namespaces["emojivoto"]
    assert (emoji_ns.stage, emoji_ns.ingresses, emoji_ns.routers) == (
        "router", 1, ["emojivoto/router"])  # fmt: skip


def test_a_fresh_cluster_gets_the_path_in_order() -> None:
    assert states(emojivoto()) == {
        "mesh-ingress": "todo",
        "mesh-namespaces": "todo",
        "leave-router": "todo",
        "edge": "nothing to do",  # optional: nodemesh-ingress is not installed
        "strict": "blocked",
        "remove-router": "blocked",
    }
    assert [s.id for s in planning.plan(survey(emojivoto()), now=NOW)] == list(planning.STEP_IDS)


def test_mesh_ingress_labels_its_namespace_and_skips_its_own_listeners() -> None:
    objects = emojivoto()
    st = step(objects, "mesh-ingress")
    assert [(c.kind, c.name) for c in st.changes] == [
        ("Namespace", "ingress-nginx"), ("Deployment", "ingress-nginx-controller")]  # fmt: skip
    ns_after = st.changes[0].after
    assert ns_after is not None and ns_after["metadata"]["labels"]["nodemesh.io/mesh"] == "enabled"
    after = applied(objects, st.changes)
    meta = template(after, "ingress-nginx", "ingress-nginx-controller")["metadata"]
    assert meta["annotations"]["nodemesh.io/skip-inbound-ports"] == "80,443,8443"
    assert meta["annotations"][planning.RESTARTED_AT] == NOW
    # What is written back is what a user applies: no status, no server-set metadata.
    dep = st.changes[1].after
    assert dep is not None and "status" not in dep
    assert "uid" not in dep["metadata"] and "resourceVersion" not in dep["metadata"]
    assert states(after)["mesh-ingress"] == "done"
    # Nothing else moved: the app namespace is still unmeshed.
    assert template(after, "emojivoto", "web") == template(objects, "emojivoto", "web")


def test_each_step_undoes_to_exactly_what_was_there() -> None:
    objects = emojivoto()
    for step_id in ("mesh-ingress", "mesh-namespaces", "leave-router", "strict",
                    "remove-router"):  # fmt: skip
        st = step(objects, step_id)
        after = applied(objects, st.changes)
        undone = applied(after, st.undo())
        key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
        assert sorted(map(key, undone)) == sorted(map(key, objects)), step_id
        cleaned = {key(o): planning.clean(o) for o in objects}
        assert {key(o): planning.clean(o) for o in undone} == cleaned, step_id
        objects = after


def test_walking_every_step_ends_meshed_strict_and_without_the_router() -> None:
    objects = emojivoto()
    for step_id in ("mesh-ingress", "mesh-namespaces", "leave-router", "strict",
                    "remove-router"):  # fmt: skip
        objects = applied(objects, step(objects, step_id).changes)
    s = survey(objects)
    assert all(ns.meshed and ns.inbound_mode == "strict" for ns in s.namespaces.values())
    assert not s.routers and not s.uses
    assert not [o for o in objects if o["metadata"]["name"] == "router"]
    env = {e["name"]: e["value"]
           for e in template(objects, "emojivoto", "web")["spec"]["containers"][0]["env"]}  # fmt: skip
    assert env["EMOJISVC_HOST"] == "emoji-svc.emojivoto:8080"
    assert env["VOTINGSVC_HOST"] == "voting-svc.emojivoto:8080"
    assert env["WEB_PORT"] == "8080"
    assert set(states(objects).values()) <= {"done", "nothing to do", "not built"}


def test_strict_waits_for_every_namespace_and_the_ingress_listeners() -> None:
    objects = emojivoto()
    st = planning.plan(survey(objects), now=NOW)[4]
    assert st.state == "blocked" and "emojivoto" in st.why and "ingress-nginx" in st.why
    # Meshed namespaces but an ingress whose listeners would be refused in strict mode.
    meshed = applied(objects, step(objects, "mesh-namespaces").changes)
    meshed = [namespace("ingress-nginx", **{"nodemesh.io/mesh": "enabled"})
              if o["kind"] == "Namespace" and o["metadata"]["name"] == "ingress-nginx" else o
              for o in meshed]  # fmt: skip
    st = planning.plan(survey(meshed), now=NOW)[4]
    assert st.state == "blocked" and "listeners are not skipped" in st.why, st.why


def test_the_router_goes_only_once_nothing_uses_it_unless_forced() -> None:
    objects = emojivoto()
    with pytest.raises(planning.PlanError, match="remove-router is blocked: still sending "
                       r"through it: deployment/web -n emojivoto"):  # fmt: skip
        step(objects, "remove-router")
    forced = step(objects, "remove-router", force=True)
    assert [(c.kind, c.name, c.after) for c in forced.changes] == [
        ("Deployment", "router", None), ("Service", "router", None)]  # fmt: skip


def test_keep_service_leaves_the_routers_service_to_the_node_agents() -> None:
    """`remove-router --keep-service`: meshed apps whose proxy variable names the router's
    Service keep it (annotated nodemesh.io/router, served by their node agents); a port that
    stands for one Service (EMOJISVC_HOST=router:8081) still needs leave-router first."""
    objects = emojivoto()
    proxied = deployment("shop", "cart", "shop/cart:1",
                         env={"http_proxy": "http://router.emojivoto:8081"})  # fmt: skip
    objects += [namespace("shop", **{"nodemesh.io/mesh": "enabled"}), proxied]
    with pytest.raises(planning.PlanError, match=r"still sending through it: "
                       r"deployment/web -n emojivoto; run leave-router first \(a kept"):  # fmt: skip
        step(objects, "remove-router", keep_service=True)  # web's HOST:PORT uses block it
    objects = applied(objects, step(objects, "mesh-namespaces").changes)
    objects = applied(objects, step(objects, "leave-router").changes)
    # leave-router rewrote web and dropped cart's proxy variable: put cart's back, as an app
    # that names the router where the survey cannot see it would still do.
    objects = [proxied if o["metadata"]["name"] == "cart" else o for o in objects]
    assert states(objects)["remove-router"] == "blocked"  # deleting it would break cart
    st = step(objects, "remove-router", keep_service=True)
    assert [(c.kind, c.name, c.after is None) for c in st.changes] == [
        ("Deployment", "router", True), ("Service", "router", False)]  # fmt: skip
    kept = st.changes[1].after
    assert kept is not None and kept["metadata"]["annotations"]["nodemesh.io/router"] == "true"
    assert kept["spec"] == st.changes[1].before["spec"]  # type: ignore[index]
    assert "keep working through the node agents" in st.why
    after = applied(objects, st.changes)
    assert states(after)["remove-router"] in ("done", "nothing to do")  # no router pods left
    undone = applied(after, st.undo())
    assert sorted(o["metadata"]["name"] for o in undone) == sorted(
        o["metadata"]["name"] for o in objects)  # fmt: skip


def test_leaving_a_router_without_known_routes_is_blocked_with_the_annotation_named() -> None:
    st = planning.plan(survey(emojivoto(routes=None)), now=NOW)[2]
    assert st.state == "blocked" and not st.changes
    assert "nodemesh.io/router-routes" in st.why and "EMOJISVC_HOST=router.emojivoto:8081" in st.why


def test_a_bad_routes_annotation_is_named() -> None:
    with pytest.raises(SurveyError, match=r"Service emojivoto/router: annotation "
                       r"nodemesh.io/router-routes: '8081=emoji' is not PORT=HOST:PORT"):  # fmt: skip
        survey(emojivoto(routes="8081=emoji"))


def test_linkerd1_per_node_http_proxy_is_dropped_not_rewritten() -> None:
    l5d = deployment("linkerd", "l5d", "buoyantio/linkerd:1.7.5")
    l5d["kind"] = "DaemonSet"
    l5d["spec"]["template"]["spec"]["containers"][0]["ports"] = [
        {"containerPort": 4140, "hostPort": 4140}]  # fmt: skip
    app = deployment("shop", "cart", "shop/cart:1", env={"http_proxy": "$(NODE_NAME):4140",
                                                          "PORT": "8080"})  # fmt: skip
    objects = [namespace("linkerd"), namespace("shop"), l5d, app]
    s = survey(objects)
    assert list(s.routers) == ["per-node:4140"]
    assert s.routers["per-node:4140"].workloads == (WorkloadRef("DaemonSet", "linkerd", "l5d"),)
    st = step(objects, "leave-router")
    after = applied(objects, st.changes)
    env = template(after, "shop", "cart")["spec"]["containers"][0]["env"]
    assert env == [{"name": "PORT", "value": "8080"}]
    assert "drop http_proxy" in st.changes[0].summary


def nodemesh_agents() -> dict[str, Any]:
    agent = deployment("nodemesh", "nodemesh-agent", "ghcr.io/nodemesh/agent:0.1.0")
    agent["kind"] = "DaemonSet"
    agent["spec"]["template"]["spec"]["containers"][0]["ports"] = [
        {"name": "router", "containerPort": 4144, "hostPort": 4144}]  # fmt: skip
    return agent


def test_apps_sending_through_nodemesh_router_mode_are_its_users_and_it_is_never_removed() -> None:
    """Router mode (HTTP_PROXY=<node>:4144) as apps name their node: $(NODE_NAME), an env from
    status.hostIP, or a node's address; the router is the agents', which remove-router keeps."""
    by_name = deployment("shop", "cart", "shop/cart:1", env={"http_proxy": "$(NODE_NAME):4144"})
    by_ip = deployment("shop", "pay", "shop/pay:1", env={"HTTP_PROXY": "http://$(HOST_IP):4144"})
    by_ip["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}})  # fmt: skip
    literal = deployment("legacy", "app", "legacy/app:1", env={"https_proxy": "10.0.0.7:4144"})
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.7"}]}}  # fmt: skip
    other = deployment("legacy", "other", "legacy/o:1", env={"http_proxy": "10.0.0.8:4144"})
    objects = [namespace("nodemesh"), namespace("shop"), namespace("legacy"), nodemesh_agents(),
               node, by_name, by_ip, literal, other]  # fmt: skip
    s = survey(objects)
    assert list(s.routers) == ["nodemesh:4144"]
    assert s.routers["nodemesh:4144"].nodemesh
    assert sorted(str(u.workload) for u in s.uses) == [
        "deployment/app -n legacy", "deployment/cart -n shop", "deployment/pay -n shop"]  # fmt: skip
    assert s.namespaces["shop"].stage == "router"
    # Leaving it is dropping the variable (once meshed, the calls are captured instead) ...
    after = applied(objects, step(objects, "leave-router").changes)
    assert "http_proxy" not in str(template(after, "shop", "cart")["spec"]["containers"][0])
    # ... and nothing of nodemesh is ever deleted as "the router".
    assert planning.remove_router(survey(after)).changes == []
    assert planning.remove_router(survey(after)).state in (planning.DONE, planning.NOTHING)
    forced = planning.remove_router(s, force=True)
    assert forced.changes == [], [c.summary for c in forced.changes]


def test_steps_that_cannot_be_applied_say_why() -> None:
    with pytest.raises(planning.PlanError, match="no step 'mesh-all'"):
        step(emojivoto(), "mesh-all")
    with pytest.raises(planning.PlanError, match="step edge is nothing to do: optional"):
        step(emojivoto(), "edge")
    objects = emojivoto()
    objects = applied(objects, step(objects, "mesh-ingress").changes)
    with pytest.raises(planning.PlanError, match="step mesh-ingress is done"):
        step(objects, "mesh-ingress")


def test_the_plan_does_not_touch_the_objects_it_read() -> None:
    objects = emojivoto()
    kept = copy.deepcopy(objects)
    planning.plan(survey(objects), now=NOW, force=True)
    assert objects == kept


def test_pods_opted_out_are_not_restarted() -> None:
    bot = deployment("load", "vote-bot", "ghcr.io/nodemesh/emojivoto:0.1.0")
    bot["spec"]["template"]["metadata"]["labels"]["nodemesh.io/mesh"] = "disabled"
    objects = [*emojivoto(), namespace("load"), bot]
    st = step(objects, "mesh-namespaces")
    touched = [(c.kind, c.namespace, c.name) for c in st.changes]
    assert ("Namespace", "", "load") in touched
    assert ("Deployment", "load", "vote-bot") not in touched
    assert ("Deployment", "emojivoto", "web") in touched
