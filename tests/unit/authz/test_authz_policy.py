"""InboundPolicy: read with errors naming the field, compiled to SPIFFE IDs, and the decisions
the destination's agent takes with it (per connection, then per request for L7 rules)."""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh import authz
from nodemesh.api import destination_pb2 as pb
from nodemesh.authz import Decision, Default, PolicyKey, SpecError, Verdict
from nodemesh.authz_codec import policy_from_pb, policy_to_pb
from nodemesh.model import PodKey

TD = "cluster.local"
WEB = "spiffe://cluster.local/ns/emojivoto/sa/web"
VOTE_BOT = "spiffe://cluster.local/ns/emojivoto/sa/vote-bot"
OTHER_NS = "spiffe://cluster.local/ns/shop/sa/cart"
FOREIGN = "spiffe://elsewhere.example/ns/emojivoto/sa/web"
POD = PodKey("emojivoto", "emoji-1")


def policy_obj(spec: dict[str, Any], name: str = "emoji") -> dict[str, Any]:
    return {
        "apiVersion": authz.API_VERSION,
        "kind": authz.KIND,
        "metadata": {"name": name, "namespace": "emojivoto"},
        "spec": spec,
    }


def compiled(spec: dict[str, Any], name: str = "emoji") -> authz.Policy:
    key = PolicyKey("emojivoto", name)
    return authz.compile_policy(
        key, authz.read_spec(policy_obj(spec, name)), pods=[POD], trust_domain=TD
    )


def conn(p: list[authz.Policy], identity: str = "", ip: str = "10.244.1.5") -> Decision:
    return authz.decide_connection(p, identity=identity, ip=ip)


def req(p: list[authz.Policy], identity: str, method: str, path: str) -> Decision:
    return authz.decide_request(p, identity=identity, ip="10.244.1.5", method=method, path=path)


# -- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({}, "spec.selector", "required"),
        ({"selector": {"matchExpressions": []}}, "spec.selector.matchExpressions", "matchLabels"),
        ({"selector": {}, "default": "allow"}, "spec.default", "'allow' is not one of deny"),
        ({"selector": {}, "ports": [0]}, "spec.ports[0]", "not a port number"),
        ({"selector": {}, "ports": "8080"}, "spec.ports", "list"),
        ({"selector": {}, "rules": [{}]}, "spec.rules[0]", "empty rule"),
        ({"selector": {}, "rules": [{"form": {}}]}, "spec.rules[0].form", "unknown field"),
        (
            {"selector": {}, "rules": [{"from": {"identities": ["web"]}}]},
            "spec.rules[0].from.identities[0]",
            "not a SPIFFE ID",
        ),
        (
            {"selector": {}, "rules": [{"from": {"networks": ["10.0.0.0/33"]}}]},
            "spec.rules[0].from.networks[0]",
            "not a CIDR",
        ),
        (
            {"selector": {}, "rules": [{"from": {"serviceAccounts": [{"name": "Web"}]}}]},
            "spec.rules[0].from.serviceAccounts[0].name",
            "not a ServiceAccount name",
        ),
        (
            {"selector": {}, "rules": [{"to": [{"methods": ["get"]}]}]},
            "spec.rules[0].to[0].methods[0]",
            "not an HTTP method",
        ),
        (
            {"selector": {}, "rules": [{"to": [{"paths": ["api/*"]}]}]},
            "spec.rules[0].to[0].paths[0]",
            "starts with /",
        ),
        (
            {"selector": {}, "rules": [{"to": [{"paths": ["/a*b"]}]}]},
            "spec.rules[0].to[0].paths[0]",
            "only at the start or the end",
        ),
        ({"selector": {}, "action": "ALLOW"}, "spec.action", "unknown field"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_field(spec: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError) as e:
        authz.read_spec(policy_obj(spec))
    assert e.value.path == field
    assert words in str(e.value)


def test_service_accounts_and_namespaces_compile_to_spiffe_ids_of_the_trust_domain() -> None:
    p = compiled(
        {
            "selector": {"matchLabels": {"app": "emoji-svc"}},
            "rules": [
                {
                    "from": {
                        "serviceAccounts": [{"name": "web"}, {"name": "bot", "namespace": "tools"}],
                        "namespaces": ["shop"],
                        "identities": [VOTE_BOT],
                        "networks": ["172.18.0.0/16"],
                    }
                }
            ],
        }
    )
    assert p.default is Default.DENY  # a policy without `default` denies what no rule allows
    (rule,) = p.rules
    assert rule.clients is not None
    assert rule.clients.identities == (
        "spiffe://cluster.local/ns/emojivoto/sa/vote-bot",
        "spiffe://cluster.local/ns/emojivoto/sa/web",  # same namespace as the policy
        "spiffe://cluster.local/ns/tools/sa/bot",
    )
    assert rule.clients.identity_prefixes == ("spiffe://cluster.local/ns/shop/sa/",)
    assert rule.clients.networks == ("172.18.0.0/16",)


# -- connection decisions --------------------------------------------------------------------


def test_no_policy_allows_everything_and_names_no_policy() -> None:
    assert conn([]) == Decision(Verdict.ALLOW)


@pytest.mark.parametrize(
    ("default", "allowed"),
    [
        ("deny", set()),
        ("cluster-authenticated", {WEB, OTHER_NS}),
        ("all-authenticated", {WEB, OTHER_NS, FOREIGN}),
        ("all", {WEB, OTHER_NS, FOREIGN, ""}),
    ],
)
def test_each_default_allows_exactly_its_clients(default: str, allowed: set[str]) -> None:
    p = [compiled({"selector": {}, "default": default})]
    for who in (WEB, OTHER_NS, FOREIGN, ""):
        d = conn(p, who)
        assert d.allowed == (who in allowed), (default, who)
        assert d.policy == "emojivoto/emoji"
        if not d.allowed:
            assert "not allowed by emojivoto/emoji" in d.reason


def test_rules_allow_identities_service_accounts_namespaces_and_networks_only() -> None:
    p = [
        compiled(
            {
                "selector": {},
                "rules": [
                    {"from": {"serviceAccounts": [{"name": "web"}]}},
                    {"from": {"namespaces": ["shop"]}},
                    {"from": {"networks": ["172.18.0.0/24"]}},
                ],
            }
        )
    ]
    assert conn(p, WEB).allowed
    assert conn(p, OTHER_NS).allowed
    assert not conn(p, VOTE_BOT).allowed  # same namespace, other ServiceAccount
    assert not conn(p, FOREIGN).allowed  # same path, other trust domain
    assert conn(p, "", ip="172.18.0.1").allowed  # unauthenticated, from the listed network
    denied = conn(p, "", ip="10.244.2.9")
    assert not denied.allowed and denied.reason.startswith("unauthenticated 10.244.2.9")


def test_ports_limit_a_policy_and_the_most_restrictive_default_governs() -> None:
    grpc_only = compiled({"selector": {}, "ports": [8080], "default": "deny"}, name="a")
    everyone = compiled({"selector": {}, "default": "all"}, name="b")
    table = authz.PolicyTable()
    table.replace([grpc_only, everyone])
    assert [p.key.name for p in table.applying(POD, 8080)] == ["a", "b"]
    assert [p.key.name for p in table.applying(POD, 8801)] == ["b"]
    assert not conn(table.applying(POD, 8080), WEB).allowed
    assert conn(table.applying(POD, 8801), "").allowed
    assert table.applying(PodKey("emojivoto", "other"), 8080) == []
    table.update([], [PolicyKey("emojivoto", "a")])
    assert conn(table.applying(POD, 8080), "").allowed


# -- request decisions -----------------------------------------------------------------------


def test_l7_rules_are_decided_per_request_by_method_and_path() -> None:
    p = [
        compiled(
            {
                "selector": {},
                "rules": [
                    {
                        "from": {"serviceAccounts": [{"name": "web"}]},
                        "to": [
                            {"methods": ["GET"], "paths": ["/api/*"]},
                            {"paths": ["/emojivoto.v1.EmojiService/ListAll"]},
                        ],
                    },
                    {"to": [{"paths": ["/healthz"]}]},  # anyone, this path only
                ],
            }
        )
    ]
    assert conn(p, WEB).verdict is Verdict.PER_REQUEST
    assert conn(p, "").verdict is Verdict.PER_REQUEST  # the /healthz rule may allow it
    assert req(p, WEB, "GET", "/api/list?x=1").allowed
    assert not req(p, WEB, "POST", "/api/list").allowed
    assert req(p, WEB, "POST", "/emojivoto.v1.EmojiService/ListAll").allowed
    assert not req(p, WEB, "POST", "/emojivoto.v1.EmojiService/FindByShortcode").allowed
    assert req(p, VOTE_BOT, "GET", "/healthz").allowed
    denied = req(p, VOTE_BOT, "GET", "/api/list?secret=1")
    assert not denied.allowed
    assert denied.reason == f"GET /api/list from {VOTE_BOT} not allowed by emojivoto/emoji"


def test_a_connection_no_rule_can_allow_is_denied_before_any_request() -> None:
    p = [
        compiled(
            {
                "selector": {},
                "rules": [
                    {"from": {"serviceAccounts": [{"name": "web"}]}, "to": [{"paths": ["/a"]}]}
                ],
            }
        )
    ]
    assert conn(p, VOTE_BOT).verdict is Verdict.DENY


def test_a_policy_survives_the_destination_stream() -> None:
    p = compiled(
        {
            "selector": {},
            "ports": [8080, 8081, 9000],
            "default": "cluster-authenticated",
            "rules": [
                {"from": {"serviceAccounts": [{"name": "web"}], "networks": ["10.0.0.0/8"]}},
                {"to": [{"methods": ["GET"], "paths": ["/x", "/y*"]}]},
            ],
        }
    )
    wire = pb.AuthzPolicy.FromString(policy_to_pb(p).SerializeToString())
    assert policy_from_pb(wire) == p
    wire.default = "something-newer"
    assert policy_from_pb(wire).default is Default.DENY  # unknown: closed
