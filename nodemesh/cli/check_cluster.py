"""`nodemesh check` against a cluster through the Kubernetes API (and the public API)."""

from __future__ import annotations

import base64
import datetime
from typing import Any

from kubernetes import client

from nodemesh.cli import checks
from nodemesh.cli.check_lab import MAX_SKEW_S, controlplane_checks, redirect_target
from nodemesh.cli.checks import Result, fail, ok, skip
from nodemesh.cli.target import Endpoint

MIN_MINOR = 29


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
                f"nodemesh needs Kubernetes 1.{MIN_MINOR} or newer",
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
        status = authz.create_self_subject_access_review(review).status
        allowed = bool(status and status.allowed)
        name = f"can create {resource}"
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
    if public is not None:
        public.close()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    g = "node agents"
    try:
        ds = apps.read_namespaced_daemon_set("nodemesh-agent", namespace)
        st = ds.status
        want = (st.desired_number_scheduled if st else 0) or 0
        ready = (st.number_ready if st else 0) or 0
        if want and ready >= want:
            results.append(ok(g, "an agent ready on every node", f"{ready}/{want}"))
        else:
            results.append(
                fail(
                    g,
                    "an agent ready on every node",
                    f"{ready}/{want} ready",
                    f"kubectl -n {namespace} get pods -l "
                    "app.kubernetes.io/name=nodemesh-agent -o wide",
                )
            )
    except client.ApiException as e:
        results.append(fail(g, "agent DaemonSet", e.reason or "error", "is nodemesh installed?"))
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
