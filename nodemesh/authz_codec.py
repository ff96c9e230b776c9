"""Compiled authorization policies to and from destination.proto (both ends of the stream)."""

from __future__ import annotations

from nodemesh import authz
from nodemesh.api import destination_pb2 as pb
from nodemesh.destination_codec import pod_key_to_pb, ports_from_pb, ports_to_pb
from nodemesh.model import PodKey


def key_to_pb(key: authz.PolicyKey) -> pb.AuthzPolicyKey:
    return pb.AuthzPolicyKey(namespace=key.namespace, name=key.name)


def key_from_pb(key: pb.AuthzPolicyKey) -> authz.PolicyKey:
    return authz.PolicyKey(key.namespace, key.name)


def policy_to_pb(p: authz.Policy) -> pb.AuthzPolicy:
    rules = []
    for r in p.rules:
        c = r.clients
        rules.append(
            pb.AuthzRule(
                any_client=c is None,
                identities=list(c.identities) if c else [],
                identity_prefixes=list(c.identity_prefixes) if c else [],
                networks=list(c.networks) if c else [],
                requests=[
                    pb.AuthzRequestMatch(methods=list(m.methods), paths=list(m.paths))
                    for m in r.requests
                ],
            )
        )
    return pb.AuthzPolicy(
        key=key_to_pb(p.key),
        pods=[pod_key_to_pb(k) for k in p.pods],
        ports=ports_to_pb(p.ports),
        default=p.default.value,
        rules=rules,
        cluster_prefix=p.cluster_prefix,
    )


def policy_from_pb(m: pb.AuthzPolicy) -> authz.Policy:
    try:
        default = authz.Default(m.default)
    except ValueError:
        default = authz.Default.DENY  # an unknown default from a newer control plane: closed
    rules = []
    for r in m.rules:
        clients = None
        if not r.any_client:
            clients = authz.ClientMatch(
                tuple(r.identities), tuple(r.identity_prefixes), tuple(r.networks)
            )
        requests = tuple(authz.RequestMatch(tuple(q.methods), tuple(q.paths)) for q in r.requests)
        rules.append(authz.Rule(clients, requests))
    return authz.Policy(
        key=key_from_pb(m.key),
        pods=tuple(PodKey(k.namespace, k.name) for k in m.pods),
        ports=ports_from_pb(list(m.ports)),
        default=default,
        rules=tuple(rules),
        cluster_prefix=m.cluster_prefix,
    )
