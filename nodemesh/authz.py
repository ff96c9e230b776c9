"""Authorization policy (sans-io, shared): the InboundPolicy resource read and checked, compiled
into what an agent enforces, and the decisions the destination's agent makes with it.

One resource, `InboundPolicy` (policy.nodemesh.io/v1alpha1), says per workload (a label
selector in its namespace) and port who may connect: a `default` (Linkerd's vocabulary: deny,
cluster-authenticated, all-authenticated, all) and allow `rules` (Istio's shape: `from` clients
by SPIFFE ID, ServiceAccount, namespace or network range, `to` requests by method and path).
docs/authorization.md explains the choice and the semantics; this module is their reference.

Reading a spec (`read_spec`) raises SpecError naming the field; the lab shows it as it shows
every manifest error and the control plane logs and skips such an object.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from nodemesh.model import PodKey, PortRange, PortSet

GROUP = "policy.nodemesh.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InboundPolicy"
PLURAL = "inboundpolicies"

_SA_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_NS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_METHOD = re.compile(r"^[A-Z]+$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


class Default(StrEnum):
    """What a client that no rule allows gets, from the most to the least restrictive."""

    DENY = "deny"
    CLUSTER_AUTHENTICATED = "cluster-authenticated"
    ALL_AUTHENTICATED = "all-authenticated"
    ALL = "all"


_STRICTNESS = {d: i for i, d in enumerate(Default)}


class SpecError(ValueError):
    """An InboundPolicy that cannot be read; `path` is the field (e.g. spec.rules[0].from)."""

    def __init__(self, path: str, message: str) -> None:
        self.path, self.detail = path, message
        super().__init__(f"{path}: {message}")


# -- the resource as written ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestMatch:
    """HTTP/gRPC requests: any of `methods` (empty: any) and any of `paths` (empty: any). A path
    is exact, `prefix*`, `*suffix` or `*` (gRPC paths are /package.Service/Method)."""

    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    def matches(self, method: str, path: str) -> bool:
        if self.methods and method.upper() not in self.methods:
            return False
        if not self.paths:
            return True
        path = path.split("?", 1)[0]
        return any(_path_matches(p, path) for p in self.paths)


def _path_matches(pattern: str, path: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return path.endswith(pattern[1:])
    return path == pattern


@dataclass(frozen=True, slots=True)
class ClientMatch:
    """Authenticated clients by exact SPIFFE ID or ID prefix (a namespace is the prefix
    `spiffe://<td>/ns/<ns>/sa/`), and clients of any kind by source network."""

    identities: tuple[str, ...] = ()
    identity_prefixes: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()  # CIDRs

    def matches(self, identity: str, ip: str) -> bool:
        if identity and (
            identity in self.identities
            or any(identity.startswith(p) for p in self.identity_prefixes)
        ):
            return True
        return bool(self.networks) and _in_networks(ip, self.networks)


def _in_networks(ip: str, networks: tuple[str, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in ipaddress.ip_network(n) for n in networks)


@dataclass(frozen=True, slots=True)
class Rule:
    """Allows a client `clients` matches (None: any client) making a request `requests`
    matches (empty: any request, so the rule is decided per connection)."""

    clients: ClientMatch | None = None
    requests: tuple[RequestMatch, ...] = ()

    @property
    def l7(self) -> bool:
        return bool(self.requests)


@dataclass(frozen=True, slots=True)
class Spec:
    """An InboundPolicy's spec as read; service accounts and namespaces still by name."""

    selector: Mapping[str, str]
    ports: PortSet  # empty: every port
    default: Default
    rules: tuple[RawRule, ...]


@dataclass(frozen=True, slots=True)
class RawRule:
    identities: tuple[str, ...]
    service_accounts: tuple[tuple[str, str], ...]  # (namespace, name)
    namespaces: tuple[str, ...]
    networks: tuple[str, ...]
    any_client: bool
    requests: tuple[RequestMatch, ...]


def read_spec(obj: Mapping[str, Any]) -> Spec:
    """Check and read an InboundPolicy object; SpecError names the first bad field."""
    namespace = str((obj.get("metadata") or {}).get("namespace") or "default")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise SpecError("spec", "required field is missing")
    unknown = set(spec) - {"selector", "ports", "default", "rules"}
    if unknown:
        raise SpecError(
            f"spec.{sorted(unknown)[0]}",
            "unknown field (InboundPolicy has selector, ports, default, rules)",
        )
    selector = _read_selector(spec.get("selector"))
    ports = _read_ports(spec.get("ports"))
    raw_default = spec.get("default", Default.DENY.value)
    try:
        default = Default(raw_default)
    except ValueError:
        allowed = ", ".join(d.value for d in Default)
        raise SpecError("spec.default", f"{raw_default!r} is not one of {allowed}") from None
    rules_in = spec.get("rules", [])
    if rules_in is None:
        rules_in = []
    if not isinstance(rules_in, list):
        raise SpecError("spec.rules", "must be a list of rules")
    rules = tuple(_read_rule(r, f"spec.rules[{i}]", namespace) for i, r in enumerate(rules_in))
    return Spec(selector, ports, default, rules)


def _read_selector(sel: Any) -> dict[str, str]:
    if sel is None:
        raise SpecError("spec.selector", "required (use `matchLabels: {}` for every pod)")
    if not isinstance(sel, dict):
        raise SpecError("spec.selector", "must be a mapping with matchLabels")
    for key in sel:
        if key != "matchLabels":
            raise SpecError(f"spec.selector.{key}", "not supported (use matchLabels)")
    labels = sel.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise SpecError("spec.selector.matchLabels", "must map label names to values")
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL_KEY.match(k):
            raise SpecError("spec.selector.matchLabels", f"{k!r} is not a valid label name")
        if not isinstance(v, str):
            raise SpecError(f"spec.selector.matchLabels.{k}", f"{v!r} must be a string")
    return dict(labels)


def _read_ports(ports: Any) -> PortSet:
    if ports is None:
        return PortSet()
    if not isinstance(ports, list):
        raise SpecError("spec.ports", "must be a list of port numbers")
    found = []
    for i, p in enumerate(ports):
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 65535:
            raise SpecError(f"spec.ports[{i}]", f"{p!r} is not a port number from 1 to 65535")
        found.append(PortRange(p, p))
    return PortSet.of(found)


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(path, "must be a list of non-empty strings")
    return tuple(value)


def _read_rule(rule: Any, path: str, namespace: str) -> RawRule:
    if not isinstance(rule, dict):
        raise SpecError(path, "must be a mapping with `from` and/or `to`")
    for key in rule:
        if key not in ("from", "to"):
            raise SpecError(f"{path}.{key}", "unknown field (a rule has from, to)")
    if not rule:
        raise SpecError(path, "needs `from`, `to` or both (an empty rule would allow everything)")
    frm = rule.get("from")
    any_client = frm is None
    identities: tuple[str, ...] = ()
    sas: list[tuple[str, str]] = []
    namespaces: tuple[str, ...] = ()
    networks: list[str] = []
    if frm is not None:
        fpath = f"{path}.from"
        if not isinstance(frm, dict) or not frm:
            raise SpecError(
                fpath, "must be a mapping with identities, serviceAccounts, namespaces, networks"
            )
        for key in frm:
            if key not in ("identities", "serviceAccounts", "namespaces", "networks"):
                raise SpecError(
                    f"{fpath}.{key}",
                    "unknown field (from has identities, serviceAccounts, namespaces, networks)",
                )
        identities = _strings(frm.get("identities"), f"{fpath}.identities")
        for j, ident in enumerate(identities):
            if not ident.startswith("spiffe://") or "/" not in ident[len("spiffe://") :]:
                raise SpecError(
                    f"{fpath}.identities[{j}]",
                    f"{ident!r} is not a SPIFFE ID (spiffe://<trust domain>/ns/<ns>/sa/<sa>)",
                )
        for j, sa in enumerate(frm.get("serviceAccounts") or []):
            spath = f"{fpath}.serviceAccounts[{j}]"
            if not isinstance(sa, dict):
                raise SpecError(spath, "must be a mapping: {name: <sa>, namespace: <ns>}")
            name, ns = sa.get("name"), sa.get("namespace", namespace)
            if not isinstance(name, str) or not _SA_NAME.match(name):
                raise SpecError(f"{spath}.name", f"{name!r} is not a ServiceAccount name")
            if not isinstance(ns, str) or not _NS_NAME.match(ns):
                raise SpecError(f"{spath}.namespace", f"{ns!r} is not a namespace name")
            sas.append((ns, name))
        if frm.get("serviceAccounts") is not None and not isinstance(frm["serviceAccounts"], list):
            raise SpecError(f"{fpath}.serviceAccounts", "must be a list")
        namespaces = _strings(frm.get("namespaces"), f"{fpath}.namespaces")
        for j, ns in enumerate(namespaces):
            if not _NS_NAME.match(ns):
                raise SpecError(f"{fpath}.namespaces[{j}]", f"{ns!r} is not a namespace name")
        for j, net in enumerate(_strings(frm.get("networks"), f"{fpath}.networks")):
            try:
                networks.append(str(ipaddress.ip_network(net, strict=False)))
            except ValueError:
                raise SpecError(
                    f"{fpath}.networks[{j}]", f"{net!r} is not a CIDR such as 10.0.0.0/8"
                ) from None
    to = rule.get("to")
    requests: list[RequestMatch] = []
    if to is not None:
        if not isinstance(to, list) or not to:
            raise SpecError(f"{path}.to", "must be a non-empty list of {methods, paths}")
        for j, op in enumerate(to):
            opath = f"{path}.to[{j}]"
            if not isinstance(op, dict) or not op:
                raise SpecError(opath, "must be a mapping with methods and/or paths")
            for key in op:
                if key not in ("methods", "paths"):
                    raise SpecError(f"{opath}.{key}", "unknown field (to has methods, paths)")
            methods = _strings(op.get("methods"), f"{opath}.methods")
            for k, m in enumerate(methods):
                if not _METHOD.match(m):
                    raise SpecError(f"{opath}.methods[{k}]", f"{m!r} is not an HTTP method")
            paths = _strings(op.get("paths"), f"{opath}.paths")
            for k, p in enumerate(paths):
                if p != "*" and not (p.startswith("/") or p.startswith("*")):
                    raise SpecError(
                        f"{opath}.paths[{k}]",
                        f"{p!r}: a path starts with / (exact, or `/prefix*`), or is `*suffix`",
                    )
                if "*" in p.strip("*") or p.startswith("*") and p.endswith("*") and p != "*":
                    raise SpecError(
                        f"{opath}.paths[{k}]", f"{p!r}: `*` only at the start or the end"
                    )
            requests.append(RequestMatch(methods, paths))
    return RawRule(identities, tuple(sas), namespaces, tuple(networks), any_client, tuple(requests))


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- compiled: what the agent of a selected pod receives -----------------------------------


@dataclass(frozen=True, slots=True)
class PolicyKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Policy:
    """One InboundPolicy compiled for one node: the node's pods it selects and the rules with
    every ServiceAccount and namespace turned into SPIFFE IDs."""

    key: PolicyKey
    pods: tuple[PodKey, ...]
    ports: PortSet
    default: Default
    rules: tuple[Rule, ...]
    cluster_prefix: str  # spiffe://<trust domain>/ : what cluster-authenticated accepts

    def covers(self, port: int) -> bool:
        return not self.ports or port in self.ports


def identity_of(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def compile_policy(
    key: PolicyKey, spec: Spec, *, pods: Iterable[PodKey], trust_domain: str
) -> Policy:
    rules = []
    for r in spec.rules:
        clients = None
        if not r.any_client:
            ids = list(r.identities)
            ids += [identity_of(trust_domain, ns, sa) for ns, sa in r.service_accounts]
            prefixes = tuple(f"spiffe://{trust_domain}/ns/{ns}/sa/" for ns in r.namespaces)
            clients = ClientMatch(tuple(sorted(set(ids))), prefixes, r.networks)
        rules.append(Rule(clients, r.requests))
    return Policy(
        key=key,
        pods=tuple(sorted(pods)),
        ports=spec.ports,
        default=spec.default,
        rules=tuple(rules),
        cluster_prefix=f"spiffe://{trust_domain}/",
    )


# -- decisions at the destination's agent --------------------------------------------------


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    PER_REQUEST = "per-request"  # only L7 rules can allow this client: decide each request


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    policy: str = ""  # namespace/name of the policy that decided ("" when none applies)
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.verdict is not Verdict.DENY


ALLOW_UNPOLICED = Decision(Verdict.ALLOW)


@dataclass(slots=True)
class PolicyTable:
    """The compiled policies an agent holds, looked up by pod and port."""

    policies: dict[PolicyKey, Policy] = field(default_factory=dict)
    _by_pod: dict[PodKey, list[Policy]] = field(default_factory=dict)

    def replace(self, policies: Iterable[Policy]) -> None:
        self.policies = {p.key: p for p in policies}
        self._reindex()

    def update(self, updated: Iterable[Policy], removed: Iterable[PolicyKey]) -> None:
        for key in removed:
            self.policies.pop(key, None)
        for p in updated:
            self.policies[p.key] = p
        self._reindex()

    def _reindex(self) -> None:
        by_pod: dict[PodKey, list[Policy]] = {}
        for p in sorted(self.policies.values(), key=lambda p: (p.key.namespace, p.key.name)):
            for pod in p.pods:
                by_pod.setdefault(pod, []).append(p)
        self._by_pod = by_pod

    def applying(self, pod: PodKey, port: int) -> list[Policy]:
        return [p for p in self._by_pod.get(pod, ()) if p.covers(port)]


def _default_allows(policy: Policy, identity: str) -> bool:
    d = policy.default
    if d is Default.ALL:
        return True
    if d is Default.ALL_AUTHENTICATED:
        return bool(identity)
    if d is Default.CLUSTER_AUTHENTICATED:
        return identity.startswith(policy.cluster_prefix)
    return False


def _governing(policies: list[Policy]) -> Policy:
    """With several policies on one pod and port, the most restrictive default holds."""
    return min(policies, key=lambda p: (_STRICTNESS[p.default], p.key.namespace, p.key.name))


def _who(identity: str, ip: str) -> str:
    return identity or f"unauthenticated {ip}"


def decide_connection(policies: list[Policy], *, identity: str, ip: str) -> Decision:
    """Before the app is reached: allow, deny, or decide per request (L7 rules only)."""
    if not policies:
        return ALLOW_UNPOLICED
    gov = _governing(policies)
    if _default_allows(gov, identity):
        return Decision(Verdict.ALLOW, str(gov.key), f"default {gov.default}")
    per_request: Policy | None = None
    for p in policies:
        for r in p.rules:
            if r.clients is None or r.clients.matches(identity, ip):
                if not r.l7:
                    return Decision(Verdict.ALLOW, str(p.key), "rule")
                per_request = per_request or p
    if per_request is not None:
        return Decision(Verdict.PER_REQUEST, str(per_request.key), "L7 rules")
    return Decision(
        Verdict.DENY,
        str(gov.key),
        f"{_who(identity, ip)} not allowed by {gov.key} (default {gov.default})",
    )


def decide_request(
    policies: list[Policy], *, identity: str, ip: str, method: str, path: str
) -> Decision:
    """One HTTP or gRPC request of a connection `decide_connection` left to PER_REQUEST."""
    first = decide_connection(policies, identity=identity, ip=ip)
    if first.verdict is not Verdict.PER_REQUEST:
        return first
    for p in policies:
        for r in p.rules:
            if (r.clients is None or r.clients.matches(identity, ip)) and any(
                m.matches(method, path) for m in r.requests
            ):
                return Decision(Verdict.ALLOW, str(p.key), "rule")
    gov = _governing(policies)
    return Decision(
        Verdict.DENY,
        str(gov.key),
        f"{method} {path.split('?', 1)[0]} from {_who(identity, ip)} not allowed by {gov.key}",
    )
