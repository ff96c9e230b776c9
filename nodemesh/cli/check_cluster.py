"""`nodemesh check` against a cluster through the Kubernetes API (and the public API)."""

from __future__ import annotations

import base64
import datetime
from typing import Any

from kubernetes import client

from nodemesh.cli import checks
from nodemesh.cli.check_lab import MAX_SKEW_S, controlplane_checks, redirect_target
from nodemesh.cli.checks import Result, fail, ok, skip
from nodemesh.cli.publicapi import ApiError, PublicApi
from nodemesh.cli.target import Endpoint

# The oldest Kubernetes whose APIs cover everything nodemesh renders and calls (docs/install.md
# says which API needs what): the agent DaemonSet's rolling update with maxSurge is GA in 1.25;
# EndpointSlice v1 and policy/v1 (1.21), projected service-account tokens with an audience
# (1.20) and TokenReview v1 are older. Tried on real clusters: 1.26 and newer.
MIN_MINOR = 25
# From 1.30 a pod's service-account token names its node (TokenReview's user extra
# authentication.kubernetes.io/node-name); before, the control plane finds the node from the
# token's pod claim through its index (controlplane/identity/authn.py).
NODE_IN_TOKEN_MINOR = 30
AGENT_SELECTOR = "app.kubernetes.io/name=nodemesh-agent"


def pre_checks(api: Any, *, namespace: str) -> list[Result]:
    g = "kubernetes"
    out: list[Result] = []
    try:
        info = client.VersionApi(api).get_code(_request_timeout=10)
    except Exception as e:  # any failure to talk to the API server
        return [fail(g, "Kubernetes API reachable", str(e), "check your kubeconfig and context")]
    minor = int("".join(ch for ch in info.minor if ch.isdigit()) or 0)
    if int(info.major) == 1 and minor < MIN_MINOR:
        out.append(
            fail(
                g,
                "Kubernetes version",
                info.git_version,
                f"nodemesh needs Kubernetes 1.{MIN_MINOR} or newer (docs/install.md says why)",
            )
        )
    elif int(info.major) == 1 and minor < NODE_IN_TOKEN_MINOR:
        out.append(
            ok(
                g,
                "Kubernetes version",
                f"{info.git_version} (tokens carry no node name before 1.{NODE_IN_TOKEN_MINOR}: "
                "the control plane finds each agent's node from its pod)",
            )
        )
    else:
        out.append(ok(g, "Kubernetes version", info.git_version))
    authz = client.AuthorizationV1Api(api)
    for group, resource, ns in (
        ("", "namespaces", None),
        ("rbac.authorization.k8s.io", "clusterroles", None),
        ("apps", "daemonsets", namespace),
        ("apps", "deployments", namespace),
        ("", "secrets", namespace),
    ):
        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    group=group, resource=resource, verb="create", namespace=ns
                )
            )
        )
        name = f"can create {resource}"
        try:
            status = authz.create_self_subject_access_review(review).status
        except client.ApiException as e:
            out.append(fail("permissions", name, f"cannot ask: {e.status} {e.reason}", "-"))
            continue
        allowed = bool(status and status.allowed)
        if allowed:
            out.append(ok("permissions", name))
        else:
            out.append(fail("permissions", name, "forbidden", "install as a cluster admin"))
    has, why = redirect_target()
    local = "this machine's kernel (run --pre on a node to check the nodes')"
    out.append(
        ok("kernel", f"nat REDIRECT on {local}", why)
        if has
        else fail("kernel", f"nat REDIRECT on {local}", why, "load xt_REDIRECT")
    )
    out.append(
        skip(
            "CNI",
            "CNI conf dir",
            "not visible through the API: install-cni reports it "
            "in its log (kubectl logs ds/nodemesh-agent -c install-cni)",
        )
    )
    return out


def post_checks(endpoint: Endpoint, *, namespace: str) -> list[Result]:
    api = endpoint.kube
    results, public = controlplane_checks(endpoint)
    try:
        results += _agent_checks(api, public, namespace=namespace)
    finally:
        if public is not None:
            public.close()
    core = client.CoreV1Api(api)
    try:
        cm = core.read_namespaced_config_map("nodemesh-config", namespace)
        anchors = (cm.data or {}).get("ca.crt", "").encode()
    except client.ApiException:
        anchors = b""
    try:
        secret = core.read_namespaced_secret("nodemesh-identity", namespace)
        issuer: bytes | None = base64.b64decode((secret.data or {}).get("issuer.crt", ""))
    except client.ApiException:
        issuer = None  # a user who may not read Secrets: checked by the control plane itself
    results += checks.certificate_checks(
        "identity", anchors_pem=anchors, issuer_pem=issuer, source=f"{namespace}/nodemesh-config"
    )
    results += _clock(core)
    return results


def _agent_checks(api: Any, public: PublicApi | None, *, namespace: str) -> list[Result]:
    """The DaemonSet's readiness, then, as in the lab, each agent's stream to the control plane:
    an agent whose token, CA or address is wrong stays Ready while it never reaches it."""
    g = "node agents"
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    out: list[Result] = []
    try:
        st = apps.read_namespaced_daemon_set("nodemesh-agent", namespace).status
    except client.ApiException as e:
        return [fail(g, "agent DaemonSet", e.reason or "error", "is nodemesh installed?")]
    want = (st.desired_number_scheduled if st else 0) or 0
    ready = (st.number_ready if st else 0) or 0
    if want and ready >= want:
        out.append(ok(g, "an agent ready on every node", f"{ready}/{want}"))
    else:
        out.append(
            fail(
                g,
                "an agent ready on every node",
                f"{ready}/{want} ready",
                f"kubectl -n {namespace} get pods -l {AGENT_SELECTOR} -o wide",
            )
        )
    try:
        pods = core.list_namespaced_pod(
            namespace, label_selector=AGENT_SELECTOR, _request_timeout=10
        ).items
    except client.ApiException as e:
        return out + [fail(g, "agent pods", e.reason or "error", "may you list pods there?")]
    on_node = {
        p.spec.node_name: p.metadata.name if p.metadata else "?"
        for p in pods
        if p.spec and p.spec.node_name
    }
    connected_check = "agents connected to the control plane"
    if public is None:
        return out + [skip(g, connected_check, "the control plane did not answer")]
    try:
        connected = {n.name for n in public.nodes().nodes if n.agent_connected}
    except ApiError as e:
        return out + [skip(g, connected_check, e.message)]
    if not on_node:
        return out + [
            fail(g, connected_check, "no agent pod runs", f"kubectl -n {namespace} get ds")
        ]
    for node, pod in sorted(on_node.items()):
        name = f"{node}: agent connected to the control plane"
        if node in connected:
            out.append(ok(g, name))
        else:
            out.append(
                fail(
                    g,
                    name,
                    "no stream from it",
                    f"kubectl -n {namespace} logs {pod} -c agent (its control plane "
                    "address, CA and token)",
                )
            )
    return out


def _clock(core: client.CoreV1Api) -> list[Result]:
    """Kubelets stamp their Ready condition with their own clock every ~10-40 s."""
    now = datetime.datetime.now(datetime.UTC)
    worst = 0.0
    for node in core.list_node(_request_timeout=10).items:
        for c in (node.status.conditions if node.status else None) or []:
            if c.type == "Ready" and c.last_heartbeat_time:
                worst = max(worst, (c.last_heartbeat_time - now).total_seconds())
    if worst > MAX_SKEW_S:
        return [
            fail(
                "clock",
                "clock skew",
                f"a node's clock is {worst:.0f} s ahead of this one",
                "synchronise the clocks with NTP",
            )
        ]
    return [ok("clock", "clock skew", f"under {MAX_SKEW_S:.0f} s")]
