"""Who is asking: authenticate an agent as its node from the bearer token in gRPC metadata.

Interface: an `Authenticator` has `async authenticate(token) -> AgentNode` and raises
`AuthenticationFailed` (answer UNAUTHENTICATED) or `AuthenticatorUnavailable` (UNAVAILABLE).
- `BootstrapTokenAuthenticator(tokens)` / `.from_file(tokens.json)`: the lab's per-node tokens.
- `TokenReviewAuthenticator(api_client, ...)`: a projected service-account token (audience
  `nodemesh`) checked with the TokenReview API; it must belong to the agent's service account,
  and the node comes from the review's user extra `authentication.kubernetes.io/node-name`, else
  the token's pod-bound claims (node, else pod looked up with `node_of_pod`).
`bearer_token(metadata)` extracts the token from `authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

AUDIENCE = "nodemesh"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
# How long a TokenReview answer is reused: a token revoked on the API server keeps working here
# for at most this long (and never past the token's own `exp`).
REVIEW_CACHE_SECONDS = 3.0


@dataclass(frozen=True)
class AgentNode:
    node: str
    subject: str  # who proved it: a service account, or "bootstrap-token"


class AuthenticationFailed(Exception):
    pass


class AuthenticatorUnavailable(Exception):
    """The check itself could not be made (API server down); the agent should retry."""


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> AgentNode: ...


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        scheme, _, token = text.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        raise AuthenticationFailed("authorization metadata must be 'Bearer <token>'")
    raise AuthenticationFailed("no authorization metadata: send 'authorization: Bearer <token>'")


class BootstrapTokenAuthenticator:
    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = {node: token.encode() for node, token in tokens.items() if token}

    @classmethod
    def from_file(cls, path: str | Path) -> BootstrapTokenAuthenticator:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise ValueError(f"{path}: expected a JSON object of node name -> token")
        return cls(data)

    async def authenticate(self, token: str) -> AgentNode:
        given = token.encode()
        found = None
        # Compare against every token so timing does not reveal how close a guess came.
        for node, expected in self._tokens.items():
            if hmac.compare_digest(given, expected):
                found = node
        if found is None:
            raise AuthenticationFailed("unknown bootstrap token")
        return AgentNode(found, "bootstrap-token")


def _jwt_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT the API server has already verified (so no signature check here)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


class TokenReviewAuthenticator:
    def __init__(
        self,
        api_client: k8s.ApiClient,
        *,
        audience: str = AUDIENCE,
        agent_service_account: tuple[str, str] = ("nodemesh", "nodemesh-agent"),
        node_of_pod: Callable[[str, str], str | None] | None = None,
        cache_seconds: float = REVIEW_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = k8s.AuthenticationV1Api(api_client)
        self._audience = audience
        self._username = "system:serviceaccount:{}:{}".format(*agent_service_account)
        self._namespace = agent_service_account[0]
        self._node_of_pod = node_of_pod
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[bytes, tuple[float, AgentNode]] = {}

    async def authenticate(self, token: str) -> AgentNode:
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        if hit and hit[0] > self._clock():
            return hit[1]
        agent = await asyncio.to_thread(self._review, token)
        if self._cache_seconds > 0:
            if len(self._cache) >= 1024:
                self._cache.clear()
            until = self._clock() + self._cache_seconds
            exp = _jwt_claims(token).get("exp")
            if isinstance(exp, int | float):
                until = min(until, self._clock() + exp - time.time())
            self._cache[digest] = (until, agent)
        return agent

    def _review(self, token: str) -> AgentNode:
        review = k8s.V1TokenReview(
            spec=k8s.V1TokenReviewSpec(token=token, audiences=[self._audience])
        )
        try:
            result = self._api.create_token_review(review)
        except ApiException as e:
            raise AuthenticatorUnavailable(f"TokenReview failed: HTTP {e.status} {e.reason}") from e
        except Exception as e:  # urllib3 connection errors and the like
            raise AuthenticatorUnavailable(f"TokenReview failed: {e}") from e
        status = result.status
        if status is None or not status.authenticated:
            error = status.error if status is not None and status.error else "not authenticated"
            raise AuthenticationFailed(f"token rejected by the API server: {error}")
        if status.audiences is not None and self._audience not in status.audiences:
            raise AuthenticationFailed(f"token is not for audience {self._audience!r}")
        user = status.user
        if user is None or user.username != self._username:
            username = user.username if user else None
            raise AuthenticationFailed(
                f"token belongs to {username!r}, not the agent's {self._username!r}"
            )
        return AgentNode(self._node_from(token, user.extra or {}), user.username)

    def _node_from(self, token: str, extra: Mapping[str, list[str]]) -> str:
        names = extra.get(NODE_NAME_EXTRA) or []
        if names and names[0]:
            return names[0]
        bound = _jwt_claims(token).get("kubernetes.io") or {}
        node = (bound.get("node") or {}).get("name")
        if isinstance(node, str) and node:
            return node
        pods = extra.get(POD_NAME_EXTRA) or []
        pod = pods[0] if pods else (bound.get("pod") or {}).get("name")
        if isinstance(pod, str) and pod and self._node_of_pod is not None:
            found = self._node_of_pod(self._namespace, pod)
            if found:
                return found
        raise AuthenticationFailed("token is not bound to a node (use a projected pod token)")
