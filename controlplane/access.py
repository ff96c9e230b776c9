"""Who calls the public API, and may they: a bearer token checked the Kubernetes way.

`Gate(review).admit(context, *attributes)` takes the caller's `authorization: Bearer <token>`,
authenticates it (TokenReview) and asks for each `ResourceAttributes` (SubjectAccessReview);
it aborts the call with UNAUTHENTICATED, PERMISSION_DENIED or UNAVAILABLE otherwise.
Review backends (one shape, so the lab runs the same path as a cluster):
- `KubeAccessReview(api_client)`: the API server's TokenReview and SubjectAccessReview.
- `LabAccessReview(path)`: the lab's grant table (access.json, root-only, written by `lab up`):
  hashed tokens -> user and groups, RBAC roles and bindings; re-read when it changes.
- `NoAccessReview()`: nothing to check callers with, so every call is refused.
Answers are reused for `REVIEW_CACHE_SECONDS` at most, so a revoked token or a removed binding
stops working within seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol

import grpc
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from controlplane.identity.authn import AuthenticationFailed, bearer_token
from nodemesh.access import ResourceAttributes, Rule

log = logging.getLogger(__name__)
REVIEW_CACHE_SECONDS = 3.0
_CACHE_MAX = 4096


@dataclass(frozen=True)
class Caller:
    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class AccessRefused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _unauthenticated(message: str) -> AccessRefused:
    return AccessRefused(grpc.StatusCode.UNAUTHENTICATED, message)


def _denied(caller: Caller, attrs: ResourceAttributes, reason: str = "") -> AccessRefused:
    text = f"{caller.username!r} may not {attrs.describe()}"
    return AccessRefused(
        grpc.StatusCode.PERMISSION_DENIED, text + (f": {reason}" if reason else "")
    )


class AccessReview(Protocol):
    async def authenticate(self, token: str) -> Caller: ...

    async def authorize(self, caller: Caller, attrs: ResourceAttributes) -> None: ...


class Gate:
    def __init__(self, review: AccessReview) -> None:
        self.review = review

    async def caller(self, context: grpc.aio.ServicerContext, *attrs: ResourceAttributes) -> Caller:
        """The authorized caller, or raises AccessRefused."""
        try:
            token = bearer_token(context.invocation_metadata())
        except AuthenticationFailed as exc:
            raise _unauthenticated(f"{exc} (nodemesh passes your kubeconfig's token)") from None
        who = await self.review.authenticate(token)
        for a in attrs:
            await self.review.authorize(who, a)
        return who

    async def admit(self, context: grpc.aio.ServicerContext, *attrs: ResourceAttributes) -> Caller:
        try:
            return await self.caller(context, *attrs)
        except AccessRefused as exc:
            await refuse(context, exc)


async def refuse(context: grpc.aio.ServicerContext, exc: AccessRefused) -> NoReturn:
    log.info("public API: refused %s: %s", exc.code.name, exc.message)
    await context.abort(exc.code, exc.message)
    raise AssertionError("unreachable")  # abort raises


class _Expiring:
    """A small dict whose entries vanish after `ttl` seconds."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.clock = clock
        self.items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        hit = self.items.get(key)
        return hit[1] if hit and hit[0] > self.clock() else None

    def put(self, key: Any, value: Any) -> None:
        if len(self.items) >= _CACHE_MAX:
            self.items.clear()
        self.items[key] = (self.clock() + self.ttl, value)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class NoAccessReview:
    async def authenticate(self, token: str) -> Caller:
        raise _unauthenticated(
            "this control plane has no way to check callers (no Kubernetes API and no lab "
            "grant table): every public API call is refused"
        )

    async def authorize(self, caller: Caller, attrs: ResourceAttributes) -> None:
        raise _denied(caller, attrs)


class KubeAccessReview:
    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        cache_seconds: float = REVIEW_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._authn = k8s.AuthenticationV1Api(api_client)
        self._authz = k8s.AuthorizationV1Api(api_client)
        self._callers = _Expiring(cache_seconds, clock)
        self._decisions = _Expiring(cache_seconds, clock)

    async def authenticate(self, token: str) -> Caller:
        key = _digest(token)
        found = self._callers.get(key)
        if found is None:
            found = await asyncio.to_thread(self._token_review, token)
            self._callers.put(key, found)
        return found

    def _token_review(self, token: str) -> Caller:
        # No audiences: the API server's own, which kubeconfig and service-account tokens carry.
        review = k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token))
        try:
            status = self._authn.create_token_review(review).status
        except ApiException as e:
            raise AccessRefused(
                grpc.StatusCode.UNAVAILABLE, f"TokenReview failed: HTTP {e.status} {e.reason}"
            ) from e
        except Exception as e:  # urllib3 connection errors and the like
            raise AccessRefused(grpc.StatusCode.UNAVAILABLE, f"TokenReview failed: {e}") from e
        if status is None or not status.authenticated or status.user is None:
            error = status.error if status is not None and status.error else "not authenticated"
            raise _unauthenticated(f"token rejected by the API server: {error}")
        user = status.user
        extra = {k: tuple(v or ()) for k, v in (user.extra or {}).items()}
        return Caller(user.username or "", tuple(user.groups or ()), user.uid or "", extra)

    async def authorize(self, caller: Caller, attrs: ResourceAttributes) -> None:
        key = (caller.username, caller.groups, caller.uid, attrs)
        decision = self._decisions.get(key)
        if decision is None:
            decision = await asyncio.to_thread(self._access_review, caller, attrs)
            self._decisions.put(key, decision)
        allowed, reason = decision
        if not allowed:
            raise _denied(caller, attrs, reason)

    def _access_review(self, caller: Caller, attrs: ResourceAttributes) -> tuple[bool, str]:
        spec = k8s.V1SubjectAccessReviewSpec(
            user=caller.username,
            groups=list(caller.groups),
            uid=caller.uid or None,
            extra={k: list(v) for k, v in caller.extra.items()} or None,
            resource_attributes=k8s.V1ResourceAttributes(
                verb=attrs.verb,
                group=attrs.group,
                resource=attrs.resource,
                subresource=attrs.subresource or None,
                namespace=attrs.namespace or None,
                name=attrs.name or None,
            ),
        )
        try:
            status = self._authz.create_subject_access_review(
                k8s.V1SubjectAccessReview(spec=spec)
            ).status
        except ApiException as e:
            raise AccessRefused(
                grpc.StatusCode.UNAVAILABLE,
                f"SubjectAccessReview failed: HTTP {e.status} {e.reason}",
            ) from e
        except Exception as e:
            raise AccessRefused(
                grpc.StatusCode.UNAVAILABLE, f"SubjectAccessReview failed: {e}"
            ) from e
        allowed = bool(status and status.allowed and not status.denied)
        return allowed, (status.reason or "") if status else ""


@dataclass(frozen=True)
class _Binding:
    rules: tuple[Rule, ...]
    users: frozenset[str]
    groups: frozenset[str]
    namespace: str  # "" = cluster-wide (a ClusterRoleBinding)


class LabAccessReview:
    """The lab's TokenReview + SubjectAccessReview over its grant table (see nodemesh.lab.access
    for the file's shape). The file is re-read when its mtime or size changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, Caller] = {}
        self._bindings: list[_Binding] = []
        try:
            self._load()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Refuse every call (UNAVAILABLE, with the reason) until the file is readable.
            log.warning("the lab's grant table %s cannot be read yet: %s", self.path, exc)

    def _load(self) -> None:
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        data = json.loads(self.path.read_text())
        users = {
            u["token_sha256"]: Caller(u["username"], tuple(u.get("groups", ())))
            for u in data.get("users", [])
        }
        roles = {
            name: tuple(Rule.from_dict(r) for r in rules)
            for name, rules in data.get("roles", {}).items()
        }
        bindings = []
        for b in data.get("bindings", []):
            if b["role"] not in roles:
                raise ValueError(f"{self.path}: binding to unknown role {b['role']!r}")
            subjects = b.get("subjects", [])
            names = {
                f"system:serviceaccount:{s['namespace']}:{s['name']}"
                if s["kind"] == "ServiceAccount"
                else s["name"]
                for s in subjects
                if s["kind"] in ("User", "ServiceAccount")
            }
            groups = {s["name"] for s in subjects if s["kind"] == "Group"}
            bindings.append(
                _Binding(roles[b["role"]], frozenset(names), frozenset(groups),
                         b.get("namespace", ""))
            )  # fmt: skip
        self._users, self._bindings, self._stamp = users, bindings, stamp

    def _fresh(self) -> None:
        try:
            self._load()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AccessRefused(
                grpc.StatusCode.UNAVAILABLE, f"the lab's grant table {self.path}: {exc}"
            ) from exc

    async def authenticate(self, token: str) -> Caller:
        self._fresh()
        given = _digest(token)
        found = None
        for digest, caller in self._users.items():
            if hmac.compare_digest(given, digest):
                found = caller
        if found is None:
            raise _unauthenticated("token rejected by the lab: unknown or revoked token")
        return found

    async def authorize(self, caller: Caller, attrs: ResourceAttributes) -> None:
        self._fresh()
        for b in self._bindings:
            if b.namespace and b.namespace != attrs.namespace:
                continue
            if caller.username not in b.users and not b.groups.intersection(caller.groups):
                continue
            if any(rule.allows(attrs) for rule in b.rules):
                return
        raise _denied(caller, attrs, "no binding of the lab's grants it")
