"""Reading and validating the Kubernetes YAML the lab accepts (sans-io: text in, objects out).

Every error names the file, the object (kind/namespace/name, or its position in the file) and the
field, so a user can fix the manifest without guessing. Validation is complete before anything is
created: a file with one bad object creates nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from ingress import spec as ingress_spec
from nodemesh import authz
from nodemesh.lab import rollout
from nodemesh.routing.spec import ROUTE_KINDS, RouteError, compile_route

# Kinds the lab runs. Others that a cluster would accept but the lab has no use for are stored
# as they are (ServiceAccount, ConfigMap, ...) so the same file applies unchanged.
RUN_KINDS = {"Namespace", "Deployment", "Service", "Pod", "DaemonSet"}
# RBAC objects are read by the lab's API server stand-in (nodemesh.lab.apiserver).
STORED_KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "Secret",
    authz.KIND,
    *ROUTE_KINDS,
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    # Served by nodemesh-ingress (ingress/), which reads them from the store as the control
    # plane reads its kinds.
    "Ingress",
    "IngressClass",
    "Gateway",
}
CLUSTER_SCOPED = {"Namespace", "Node", "ClusterRole", "ClusterRoleBinding", "IngressClass"}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class ManifestError(ValueError):
    """A manifest is not valid; the message says where and what."""

    def __init__(self, source: str, where: str, message: str) -> None:
        self.source, self.where, self.detail = source, where, message
        super().__init__(f"{source}: {where}: {message}")


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    namespace: str  # "" for cluster-scoped kinds
    name: str

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {ns}{self.name}"


@dataclass
class Manifest:
    """One object read from a file, with where it came from."""

    obj: dict[str, Any]
    source: str
    index: int  # position of the document in its file, from 1
    ref: ObjectRef = field(init=False)

    def __post_init__(self) -> None:
        self.ref = ref_of(self.obj)


def ref_of(obj: dict[str, Any]) -> ObjectRef:
    kind = obj.get("kind", "")
    meta = obj.get("metadata") or {}
    ns = "" if kind in CLUSTER_SCOPED else (meta.get("namespace") or "default")
    return ObjectRef(kind, ns, meta.get("name", ""))


def parse(text: str, *, source: str) -> list[Manifest]:
    """Parse a multi-document YAML text into validated manifests (structure only)."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "document"
        problem = getattr(e, "problem", None) or str(e)
        raise ManifestError(source, where, f"invalid YAML: {problem}") from e
    out: list[Manifest] = []
    for i, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        for item in _expand_lists(doc, source=source, index=i):
            validate(item, source=source, index=i)
            out.append(Manifest(item, source, i))
    if not out:
        raise ManifestError(source, "file", "holds no Kubernetes objects")
    seen: dict[ObjectRef, int] = {}
    for m in out:
        if m.ref in seen:
            raise ManifestError(source, f"document {m.index}", f"{m.ref} is defined twice")
        seen[m.ref] = m.index
    return out


def _expand_lists(doc: Any, *, source: str, index: int) -> list[dict[str, Any]]:
    if not isinstance(doc, dict):
        raise ManifestError(source, f"document {index}", "is not a mapping (a Kubernetes object)")
    if doc.get("kind") == "List":
        items = doc.get("items")
        if not isinstance(items, list):
            raise ManifestError(source, f"document {index} (List)", "items: must be a list")
        return [_expand_lists(it, source=source, index=index)[0] for it in items]
    return [doc]


def _where(obj: dict[str, Any], index: int) -> str:
    kind = obj.get("kind") or "object"
    name = (obj.get("metadata") or {}).get("name")
    return f"document {index} ({kind} {name})" if name else f"document {index} ({kind})"


def validate(obj: dict[str, Any], *, source: str, index: int) -> None:
    where = _where(obj, index)

    def fail(msg: str) -> ManifestError:
        return ManifestError(source, where, msg)

    kind = obj.get("kind")
    if not kind or not isinstance(kind, str):
        raise fail("kind: required field is missing")
    if "apiVersion" not in obj:
        raise fail("apiVersion: required field is missing")
    if kind not in RUN_KINDS | STORED_KINDS:
        known = ", ".join(sorted(RUN_KINDS | STORED_KINDS))
        raise fail(f"kind: unknown kind {kind!r} (the lab knows {known})")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise fail("metadata: required field is missing")
    name = meta.get("name")
    if not name or not isinstance(name, str):
        raise fail("metadata.name: required field is missing")
    pattern = _DNS_LABEL if kind in {"Namespace", "Service"} else _DNS_SUBDOMAIN
    if len(name) > 63 or not pattern.match(name):
        raise fail(f"metadata.name: {name!r} is not a valid DNS name")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or not _DNS_LABEL.match(ns)):
        raise fail(f"metadata.namespace: {ns!r} is not a valid namespace name")
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            raise fail(f"metadata.{key}: must map strings to strings")
    checker = _CHECKS.get(kind)
    if checker:
        checker(obj, fail)


Fail = Callable[[str], ManifestError]


def _check_deployment(obj: dict[str, Any], fail: Fail) -> None:
    spec = _need_dict(obj, "spec", fail)
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= 100:
        raise fail(f"spec.replicas: {replicas!r} is not a whole number from 0 to 100")
    _check_selector_and_template(spec, fail)


def _check_daemonset(obj: dict[str, Any], fail: Fail) -> None:
    _check_selector_and_template(_need_dict(obj, "spec", fail), fail)
    strategy = obj["spec"].get("updateStrategy")
    if strategy is not None and not isinstance(strategy, dict):
        raise fail("spec.updateStrategy: must be a mapping")
    if not isinstance((strategy or {}).get("rollingUpdate") or {}, dict):
        raise fail("spec.updateStrategy.rollingUpdate: must be a mapping")
    try:
        rollout.strategy_of(obj, 1)
    except rollout.StrategyError as e:
        raise fail(f"spec.updateStrategy: {str(e).split(': ', 1)[1]}") from None


def _check_selector_and_template(spec: dict[str, Any], fail: Fail) -> None:
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not isinstance(selector.get("matchLabels"), dict):
        raise fail("spec.selector.matchLabels: required field is missing")
    template = spec.get("template")
    if not isinstance(template, dict):
        raise fail("spec.template: required field is missing")
    labels = (template.get("metadata") or {}).get("labels") or {}
    for k, v in selector["matchLabels"].items():
        if labels.get(k) != v:
            raise fail(
                f"spec.template.metadata.labels: does not match spec.selector.matchLabels "
                f"({k}={v} is missing)"
            )
    _check_pod_spec(template.get("spec"), "spec.template.spec", fail)


def _check_pod(obj: dict[str, Any], fail: Fail) -> None:
    _check_pod_spec(obj.get("spec"), "spec", fail)


def _check_pod_spec(spec: Any, path: str, fail: Fail) -> None:
    if not isinstance(spec, dict):
        raise fail(f"{path}: required field is missing")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise fail(f"{path}.containers: at least one container is required")
    inits = spec.get("initContainers") or []
    if not isinstance(inits, list):
        raise fail(f"{path}.initContainers: must be a list")
    names: set[str] = set()
    numbered = [("initContainers", i, c) for i, c in enumerate(inits)]
    numbered += [("containers", i, c) for i, c in enumerate(containers)]
    for field_name, i, c in numbered:
        cpath = f"{path}.{field_name}[{i}]"
        if not isinstance(c, dict):
            raise fail(f"{cpath}: must be a mapping")
        cname = c.get("name")
        if not cname or not isinstance(cname, str):
            raise fail(f"{cpath}.name: required field is missing")
        if cname in names:
            raise fail(f"{cpath}.name: {cname!r} is used twice")
        names.add(cname)
        cpath = f"{path}.{field_name}[{i}] ({cname})"
        command = c.get("command")
        if not isinstance(command, list) or not command:
            raise fail(
                f"{cpath}.command: required in the lab (containers run as host processes, "
                "there is no image entrypoint)"
            )
        for key in ("command", "args"):
            val = c.get(key, [])
            if not isinstance(val, list) or not all(isinstance(a, str | int) for a in val):
                raise fail(f"{cpath}.{key}: must be a list of strings")
        for j, env in enumerate(c.get("env") or []):
            if not isinstance(env, dict) or not isinstance(env.get("name"), str):
                raise fail(f"{cpath}.env[{j}].name: required field is missing")
            if "value" in env and not isinstance(env["value"], str):
                raise fail(f"{cpath}.env[{j}].value: must be a string (quote numbers)")
        for probe_key in ("readinessProbe", "livenessProbe"):
            probe = c.get(probe_key)
            if probe is not None:
                _check_probe(probe, f"{cpath}.{probe_key}", fail)
    policy = spec.get("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        raise fail(f"{path}.restartPolicy: {policy!r} is not Always, OnFailure or Never")
    node_selector = spec.get("nodeSelector")
    if node_selector is not None and not isinstance(node_selector, dict):
        raise fail(f"{path}.nodeSelector: must map label names to values")


def _check_probe(probe: Any, path: str, fail: Fail) -> None:
    if not isinstance(probe, dict):
        raise fail(f"{path}: must be a mapping")
    handlers = [k for k in ("httpGet", "tcpSocket", "exec", "grpc") if k in probe]
    if len(handlers) != 1:
        raise fail(f"{path}: needs exactly one of httpGet, tcpSocket, exec")
    handler = handlers[0]
    if handler == "grpc":
        raise fail(f"{path}.grpc: not supported by the lab; use tcpSocket")
    if handler in ("httpGet", "tcpSocket"):
        port = (probe[handler] or {}).get("port")
        if not isinstance(port, int | str) or port == "":
            raise fail(f"{path}.{handler}.port: required field is missing")
    for key in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold"):
        v = probe.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise fail(f"{path}.{key}: {v!r} is not a whole number >= 0")


def _check_service(obj: dict[str, Any], fail: Fail) -> None:
    spec = _need_dict(obj, "spec", fail)
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not selector:
        raise fail("spec.selector: required in the lab (Services without a selector are not run)")
    ports = spec.get("ports")
    if not isinstance(ports, list) or not ports:
        raise fail("spec.ports: at least one port is required")
    seen: set[str] = set()
    for i, p in enumerate(ports):
        ppath = f"spec.ports[{i}]"
        if not isinstance(p, dict):
            raise fail(f"{ppath}: must be a mapping")
        port = p.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise fail(f"{ppath}.port: {port!r} is not a port number from 1 to 65535")
        proto = p.get("protocol", "TCP")
        if proto not in ("TCP", "UDP"):
            raise fail(f"{ppath}.protocol: {proto!r} is not TCP or UDP")
        if len(ports) > 1 and not p.get("name"):
            raise fail(f"{ppath}.name: required when a Service has more than one port")
        pname = str(p.get("name", ""))
        if pname in seen:
            raise fail(f"{ppath}.name: {pname!r} is used twice")
        seen.add(pname)
    ctype = spec.get("type", "ClusterIP")
    if ctype not in ("ClusterIP",):
        raise fail(f"spec.type: {ctype!r} is not supported by the lab (ClusterIP only)")


def _check_inbound_policy(obj: dict[str, Any], fail: Fail) -> None:
    if obj["apiVersion"] != authz.API_VERSION:
        raise fail(f"apiVersion: {obj['apiVersion']!r} is not {authz.API_VERSION}")
    try:
        authz.read_spec(obj)
    except authz.SpecError as e:
        raise fail(str(e)) from None


def _check_route(obj: dict[str, Any], fail: Fail) -> None:
    try:
        compile_route(obj)
    except RouteError as e:
        raise fail(str(e)) from None


def _check_ingress(obj: dict[str, Any], fail: Fail) -> None:
    """Ingresses nodemesh serves are checked as nodemesh-ingress reads them; others (another
    controller's class) are stored as they are, as an API server would."""
    if ingress_spec.class_of(obj) != ingress_spec.CLASS_NAME:
        return
    try:
        ingress_spec.read_ingress(obj)
    except ingress_spec.BadIngress as e:
        raise fail(str(e).split(": ", 1)[1]) from None


def _need_dict(obj: dict[str, Any], key: str, fail: Fail) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise fail(f"{key}: required field is missing")
    return value


_CHECKS: dict[str, Callable[[dict[str, Any], Fail], None]] = {
    "Deployment": _check_deployment,
    "DaemonSet": _check_daemonset,
    "Pod": _check_pod,
    "Service": _check_service,
    authz.KIND: _check_inbound_policy,
    "HTTPRoute": _check_route,
    "GRPCRoute": _check_route,
    "Ingress": _check_ingress,
}


def pod_templates(manifest: Manifest) -> Iterable[tuple[dict[str, str], dict[str, Any]]]:
    """(labels, pod spec) of every pod this object would run."""
    obj = manifest.obj
    if obj["kind"] in ("Deployment", "DaemonSet"):
        tmpl = obj["spec"]["template"]
        yield (tmpl.get("metadata") or {}).get("labels") or {}, tmpl["spec"]
    elif obj["kind"] == "Pod":
        yield obj["metadata"].get("labels") or {}, obj["spec"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_references(
    manifests: list[Manifest],
    *,
    existing: Iterable[dict[str, Any]],
    which: Callable[[str], str | None],
) -> None:
    """Checks that need more than one object: namespaces exist, Services select something,
    commands exist on this machine."""
    existing = list(existing)
    namespaces = {o["metadata"]["name"] for o in existing if o.get("kind") == "Namespace"}
    namespaces |= {m.ref.name for m in manifests if m.ref.kind == "Namespace"}
    templates: list[tuple[str, dict[str, str]]] = []
    for o in existing:
        if o.get("kind") in ("Deployment", "DaemonSet", "Pod"):
            for labels, _spec in pod_templates(Manifest(o, "(lab)", 0)):
                templates.append((ref_of(o).namespace, labels))
    for m in manifests:
        for labels, _spec in pod_templates(m):
            templates.append((m.ref.namespace, labels))
    for m in manifests:
        where = f"document {m.index} ({m.ref})"
        if m.ref.namespace and m.ref.namespace not in namespaces:
            raise ManifestError(
                m.source, where, f"metadata.namespace: namespace {m.ref.namespace!r} not found"
            )
        if m.ref.kind == "Service":
            selector = m.obj["spec"]["selector"]
            if not any(ns == m.ref.namespace and selects(selector, lb) for ns, lb in templates):
                raise ManifestError(
                    m.source,
                    where,
                    f"spec.selector: {selector} selects no Pod or Deployment in namespace "
                    f"{m.ref.namespace!r}",
                )
        for _labels, spec in pod_templates(m):
            base = "spec.template.spec" if m.ref.kind != "Pod" else "spec"
            for key in ("initContainers", "containers"):
                for i, c in enumerate(spec.get(key) or []):
                    exe = str(c["command"][0])
                    if "$(" not in exe and which(exe) is None:
                        raise ManifestError(
                            m.source,
                            where,
                            f"{base}.{key}[{i}] ({c['name']}).command: {exe!r} not found on "
                            "this machine",
                        )
