"""The adoption path as ordered, reversible steps: each step is a list of object changes (the
object before, the object after), computed from a survey; undoing a step writes the befores back.
Pure: no I/O, the time of a restart is given."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ingress import spec as ingress_spec
from nodemesh.migrate.survey import (
    HOST_PORT,
    INBOUND_MODE,
    MESH_LABEL,
    NODEMESH_ROUTER,
    ROUTER_ROUTES,
    ROUTER_SERVICE,
    SKIP_INBOUND,
    RouterUse,
    Survey,
    WorkloadRef,
    containers,
)

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
# The order of the path (DESIGN.md "Adoption path").
STEP_IDS = ("mesh-ingress", "mesh-namespaces", "leave-router", "edge", "strict", "remove-router")

TODO, DONE, BLOCKED, NOTHING, NOT_BUILT = "todo", "done", "blocked", "nothing to do", "not built"


class PlanError(ValueError):
    """A step that does not exist or cannot be applied now; the message says why."""


@dataclass(frozen=True)
class Change:
    kind: str
    namespace: str  # "" for Namespaces
    name: str
    before: dict[str, Any] | None  # None: the step creates it
    after: dict[str, Any] | None  # None: the step deletes it
    summary: str

    def inverse(self) -> Change:
        return Change(self.kind, self.namespace, self.name, self.after, self.before,
                      f"undo: {self.summary}")  # fmt: skip


@dataclass
class Step:
    id: str
    title: str
    state: str
    why: str = ""
    changes: list[Change] = field(default_factory=list)

    def undo(self) -> list[Change]:
        return [c.inverse() for c in reversed(self.changes)]


def clean(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as a user would apply it: no status, no server-set metadata."""
    out = copy.deepcopy(obj)
    out.pop("status", None)
    meta = out.setdefault("metadata", {})
    for k in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
              "selfLink"):  # fmt: skip
        meta.pop(k, None)
    annotations = meta.get("annotations") or {}
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    if "annotations" in meta and not annotations:
        meta.pop("annotations")
    return out


def _key(ref: WorkloadRef) -> tuple[str, str, str]:
    return (ref.kind, ref.namespace, ref.name)


def _template_annotations(obj: dict[str, Any]) -> dict[str, Any]:
    tmeta = obj["spec"]["template"].setdefault("metadata", {})
    annotations: dict[str, Any] = tmeta.setdefault("annotations", {})
    return annotations


def _restarted(obj: dict[str, Any], now: str) -> dict[str, Any]:
    out = clean(obj)
    _template_annotations(out)[RESTARTED_AT] = now
    return out


def _namespace_change(
    survey: Survey, name: str, *, mesh: bool, mode: str | None, why: str
) -> Change | None:
    ns = survey.get("Namespace", "", name)
    if ns is None:
        return None
    after = clean(ns)
    meta = after["metadata"]
    labels = meta.setdefault("labels", {})
    annotations = meta.setdefault("annotations", {})
    if mesh:
        labels[MESH_LABEL] = "enabled"
    if mode:
        annotations[INBOUND_MODE] = mode
    if not annotations:
        meta.pop("annotations")
    if after == clean(ns):
        return None
    return Change("Namespace", "", name, clean(ns), after, why)


def _declared_ports(obj: dict[str, Any]) -> list[int]:
    return sorted(
        {int(p["containerPort"]) for c in containers(obj) for p in c.get("ports") or []
         if p.get("containerPort") and (p.get("protocol") or "TCP") == "TCP"}
    )  # fmt: skip


def _ports_text(ports: list[int]) -> str:
    return ",".join(str(p) for p in ports)


def _skipped(obj: dict[str, Any]) -> set[int]:
    text = str(_template_annotations(copy.deepcopy(obj)).get(SKIP_INBOUND, ""))
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            out.update(range(int(lo), int(hi or lo) + 1))
    return out


def mesh_ingress(survey: Survey, now: str) -> Step:
    step = Step("mesh-ingress", "mesh the ingress controllers", TODO)
    controllers = survey.ingress_controllers
    if not controllers:
        step.state, step.why = NOTHING, "no ingress controller found"
        return step
    seen_ns: set[str] = set()
    for ref in controllers:
        obj = survey.objects[_key(ref)]
        state = survey.namespaces[ref.namespace]
        ports = _declared_ports(obj)
        if state.meshed and set(ports) <= _skipped(obj):
            continue
        if not state.meshed and ref.namespace not in seen_ns:
            seen_ns.add(ref.namespace)
            change = _namespace_change(
                survey, ref.namespace, mesh=True, mode=None,
                why=f"label namespace {ref.namespace} {MESH_LABEL}=enabled",
            )  # fmt: skip
            if change:
                step.changes.append(change)
        after = _restarted(obj, now)
        if ports:
            skip = sorted(_skipped(obj) | set(ports))
            _template_annotations(after)[SKIP_INBOUND] = _ports_text(skip)
        listeners = f" (its listeners {_ports_text(ports)} skipped)" if ports else ""
        step.changes.append(
            Change(
                ref.kind,
                ref.namespace,
                ref.name,
                clean(obj),
                after,
                f"restart {ref} into the mesh{listeners}",
            )  # fmt: skip
        )
    if not step.changes:
        step.state = DONE
        step.why = "every ingress controller is meshed, its listeners skipped"
    else:
        step.why = ("its calls to backends (Service VIPs and pod IPs) become mTLS; clients "
                    "outside the mesh still reach its listeners unchanged")  # fmt: skip
    return step


def mesh_namespaces(survey: Survey, now: str) -> Step:
    step = Step("mesh-namespaces", "mesh the application namespaces (permissive)", TODO)
    for name, state in sorted(survey.namespaces.items()):
        if state.meshed or not state.workloads:
            continue
        change = _namespace_change(
            survey, name, mesh=True, mode="permissive",
            why=f"label namespace {name} {MESH_LABEL}=enabled, {INBOUND_MODE}=permissive",
        )  # fmt: skip
        if change:
            step.changes.append(change)
        for ref in state.to_restart:
            obj = survey.objects[_key(ref)]
            step.changes.append(
                Change(
                    ref.kind,
                    ref.namespace,
                    ref.name,
                    clean(obj),
                    _restarted(obj, now),
                    f"restart {ref} into the mesh",
                )  # fmt: skip
            )
    if not step.changes:
        step.state, step.why = DONE, "every namespace with workloads is meshed"
    else:
        step.why = "permissive: clients outside the mesh keep working while it spreads"
    return step


def leave_router(survey: Survey) -> Step:
    step = Step("leave-router", "move apps off the router", TODO)
    if not survey.uses:
        step.state = DONE if survey.routers else NOTHING
        step.why = "no workload sends through a router" if not survey.routers else (
            "no workload sends through a router any more")  # fmt: skip
        return step
    missing: list[str] = []
    by_workload: dict[WorkloadRef, list[Any]] = {}
    for use in survey.uses:
        by_workload.setdefault(use.workload, []).append(use)
    for ref, uses in sorted(by_workload.items()):
        obj = survey.objects[_key(ref)]
        after = clean(obj)
        said: list[str] = []
        for use in uses:
            router = survey.routers[use.router]
            for c in after["spec"]["template"]["spec"]["containers"]:
                if c.get("name", "") != use.container:
                    continue
                env = c.get("env") or []
                if use.proxy_env:
                    c["env"] = [e for e in env if e.get("name") != use.env]
                    said.append(f"drop {use.env}")
                    continue
                m = HOST_PORT.match(use.value.strip())
                dest = router.routes.get(int(m["port"])) if m else None
                if dest is None:
                    missing.append(
                        f"{ref} {use.env}={use.value}: Service {router.name} has no route for "
                        f"this port in annotation {ROUTER_ROUTES}"
                    )
                    continue
                for e in env:
                    if e.get("name") == use.env:
                        e["value"] = dest
                said.append(f"{use.env}={dest}")
        step.changes.append(
            Change(
                ref.kind,
                ref.namespace,
                ref.name,
                clean(obj),
                after,
                f"{ref}: {', '.join(said)} (its calls go straight to the Services, "
                "captured by the mesh)",
            )  # fmt: skip
        )
    if missing:
        step.state, step.why, step.changes = BLOCKED, "; ".join(missing), []
    else:
        step.why = "each app calls its Services directly; the mesh carries the calls"
    return step


EDGE_DEPLOYMENT = "nodemesh-ingress"  # rendered by `nodemesh install --ingress`
EDGE_COPY_SUFFIX = "-nodemesh"


def edge(survey: Survey) -> Step:
    """Each Ingress of another controller gets a copy of class nodemesh, so nodemesh-ingress
    serves its hosts too while the old controller still does: moving DNS (or the external load
    balancer) to nodemesh-ingress' Service, and deleting the old Ingress, stay the user's."""
    step = Step("edge", "serve each Ingress from nodemesh-ingress too (a copy of class nodemesh)",
                TODO)  # fmt: skip
    ingresses = sorted(k for k in survey.objects if k[0] == "Ingress")
    if not ingresses:
        step.state, step.why = NOTHING, "no Ingress found"
        return step
    if not any(k[0] == "Deployment" and k[2] == EDGE_DEPLOYMENT for k in survey.objects):
        step.state = NOTHING
        step.why = ("optional: nodemesh-ingress is not installed (`nodemesh install --ingress`); "
                    "the meshed controller keeps serving the Ingresses")  # fmt: skip
        return step
    refused = []
    for _, ns, name in ingresses:
        obj = survey.objects[("Ingress", ns, name)]
        if ingress_spec.class_of(obj) == ingress_spec.CLASS_NAME:
            continue
        copy_name = name + EDGE_COPY_SUFFIX
        if ("Ingress", ns, copy_name) in survey.objects:
            continue
        after = clean(obj)
        after["metadata"]["name"] = copy_name
        annotations = after["metadata"].get("annotations") or {}
        annotations.pop(ingress_spec.CLASS_ANNOTATION, None)
        if "annotations" in after["metadata"] and not annotations:
            after["metadata"].pop("annotations")
        after.setdefault("spec", {})["ingressClassName"] = ingress_spec.CLASS_NAME
        try:
            ingress_spec.read_ingress(after)
        except ingress_spec.BadIngress as e:
            refused.append(f"ingress/{name} -n {ns} cannot be served by nodemesh-ingress: "
                           + str(e).split(": ", 1)[1])  # fmt: skip
            continue
        step.changes.append(
            Change(
                "Ingress",
                ns,
                copy_name,
                None,
                after,
                f"ingress/{copy_name} -n {ns}: a copy of ingress/{name} for nodemesh-ingress "
                "(the old controller keeps serving ingress/" + name + ")",
            )  # fmt: skip
        )
    if refused and not step.changes:
        step.state, step.why = BLOCKED, "; ".join(refused)
    elif not step.changes:
        step.state = DONE
        step.why = ("every Ingress is served by nodemesh-ingress too: point DNS at its Service, "
                    "then delete the old Ingresses")  # fmt: skip
    else:
        step.why = "both controllers serve the hosts; then move DNS to nodemesh-ingress' Service"
        if refused:
            step.why += f" (left out: {'; '.join(refused)})"
    return step


def strict(survey: Survey, now: str) -> Step:
    step = Step("strict", "strict inbound mode in every meshed namespace", TODO)
    unmeshed = [n for n, s in sorted(survey.namespaces.items()) if not s.meshed and s.workloads]
    if unmeshed:
        step.state = BLOCKED
        step.why = (f"namespaces not meshed yet ({', '.join(unmeshed)}): their pods would be "
                    "refused; run mesh-namespaces first")  # fmt: skip
        return step
    for ref in survey.ingress_controllers:
        obj = survey.objects[_key(ref)]
        if not set(_declared_ports(obj)) <= _skipped(obj):
            step.state = BLOCKED
            step.why = f"{ref}: its listeners are not skipped yet; run mesh-ingress first"
            return step
    for name, state in sorted(survey.namespaces.items()):
        if not state.meshed or state.inbound_mode == "strict":
            continue
        change = _namespace_change(
            survey, name, mesh=True, mode="strict", why=f"{INBOUND_MODE}=strict on {name}"
        )
        if change:
            step.changes.append(change)
        for ref in state.to_restart:
            obj = survey.objects[_key(ref)]
            step.changes.append(
                Change(
                    ref.kind,
                    ref.namespace,
                    ref.name,
                    clean(obj),
                    _restarted(obj, now),
                    f"restart {ref} to take the strict mode",
                )  # fmt: skip
            )
    if not step.changes:
        step.state, step.why = DONE, "every meshed namespace is strict"
    else:
        step.why = "only mTLS from meshed pods (and the node's probes) reaches the apps"
    return step


def remove_router(survey: Survey, *, force: bool = False, keep_service: bool = False) -> Step:
    """`keep_service`: the router's Service stays, annotated router-compatible (ROUTER_SERVICE):
    the node agents route what meshed apps still send to it by Host or proxy target."""
    step = Step("remove-router", "remove the router", TODO)
    if not survey.routers:
        step.state, step.why = NOTHING if not survey.uses else DONE, "no router found"
        return step
    uses = survey.uses
    if keep_service:
        uses = [u for u in uses if not _served_by_kept_service(survey, u)]
    if uses and not force:
        users = sorted({str(u.workload) for u in uses})
        step.state = BLOCKED
        step.why = f"still sending through it: {', '.join(users)}; run leave-router first"
        if keep_service:
            step.why += (" (a kept router Service carries the proxy and Host-routed requests "
                         "of meshed apps only, not a port standing for a Service)")  # fmt: skip
        return step
    for router in sorted(survey.routers.values(), key=lambda r: r.name):
        if router.nodemesh:
            continue  # the agents' own router mode: `install --no-router` turns it off
        for ref in router.workloads:
            obj = survey.objects[_key(ref)]
            step.changes.append(Change(ref.kind, ref.namespace, ref.name, clean(obj), None,
                                       f"delete {ref}"))  # fmt: skip
        if router.service:
            ns, _, name = router.service.partition("/")
            svc = survey.get("Service", ns, name)
            if svc is not None and keep_service:
                kept = clean(svc)
                kept.setdefault("metadata", {}).setdefault("annotations", {})[ROUTER_SERVICE] = (
                    "true"
                )
                step.changes.append(Change("Service", ns, name, clean(svc), kept,
                                           f"keep service/{name} -n {ns} as a router Service "
                                           f"({ROUTER_SERVICE}=true): the node agents serve "
                                           "it"))  # fmt: skip
            elif svc is not None:
                step.changes.append(Change("Service", ns, name, clean(svc), None,
                                           f"delete service/{name} -n {ns}"))  # fmt: skip
    step.why = "nothing sends through it any more" if not uses else "forced"
    if keep_service and len(uses) < len(survey.uses):
        step.why += "; the apps still naming its Service keep working through the node agents"
    if not step.changes and all(r.nodemesh for r in survey.routers.values()):
        step.state = DONE
        step.why = (f"only nodemesh's own router ({NODEMESH_ROUTER}, the node agents): nothing to "
                    "remove; `nodemesh install --no-router` closes its port")  # fmt: skip
    return step


def _served_by_kept_service(survey: Survey, use: RouterUse) -> bool:
    """A use a router Service kept router-compatible carries: a proxy variable naming the
    Service, from a meshed namespace (its connections are captured to the agent)."""
    router = survey.routers.get(use.router)
    ns = survey.namespaces.get(use.workload.namespace)
    return (
        use.proxy_env
        and router is not None
        and router.service is not None
        and ns is not None
        and ns.meshed
    )


def plan(
    survey: Survey, *, now: str, force: bool = False, keep_service: bool = False
) -> list[Step]:
    """Every step of the path in order, each with its state and its changes for this cluster."""
    return [
        mesh_ingress(survey, now),
        mesh_namespaces(survey, now),
        leave_router(survey),
        edge(survey),
        strict(survey, now),
        remove_router(survey, force=force, keep_service=keep_service),
    ]


def step_to_apply(steps: list[Step], step_id: str) -> Step:
    """The step STEP_ID, if it can be applied now; PlanError says why not."""
    if step_id not in STEP_IDS:
        raise PlanError(f"no step {step_id!r}: the steps are {', '.join(STEP_IDS)}")
    step = next(s for s in steps if s.id == step_id)
    if step.state != TODO:
        raise PlanError(f"step {step_id} is {step.state}: {step.why}")
    return step
