"""The CustomResourceDefinitions nodemesh owns: InboundPolicy (policy.nodemesh.io), with an
OpenAPI schema so the API server rejects a malformed policy before the control plane sees it.
The Gateway API's HTTPRoute/GRPCRoute CRDs are not ours: docs/install.md says how to add them."""

from __future__ import annotations

from typing import Any

from nodemesh import authz
from nodemesh.cli.install.meta import Obj

_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string", "minLength": 1}}


def _inbound_policy_schema() -> Obj:
    selector = {
        "type": "object",
        "description": "The pods of this namespace the policy applies to.",
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
        },
    }
    client = {
        "type": "object",
        "description": "Clients allowed: any one of these matches.",
        "minProperties": 1,
        "properties": {
            "identities": {**_STRINGS, "description": "SPIFFE IDs of mTLS clients."},
            "serviceAccounts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "namespace": {"type": "string"},
                    },
                },
            },
            "namespaces": {**_STRINGS, "description": "Every mTLS client of these namespaces."},
            "networks": {
                **_STRINGS,
                "description": "Source CIDRs, authenticated or not (probes, ingress).",
            },
        },
    }
    request = {
        "type": "object",
        "minProperties": 1,
        "properties": {
            "methods": {**_STRINGS, "description": "HTTP methods (gRPC calls are POST)."},
            "paths": {
                **_STRINGS,
                "description": "Exact, `/prefix*`, `*suffix` or `*`; gRPC: /pkg.Service/Method.",
            },
        },
    }
    spec = {
        "type": "object",
        "required": ["selector"],
        "properties": {
            "selector": selector,
            "ports": {
                "type": "array",
                "description": "The pods' ports it governs (all when absent).",
                "items": {"type": "integer", "minimum": 1, "maximum": 65535},
            },
            "default": {
                "type": "string",
                "enum": [d.value for d in authz.Default],
                "default": authz.Default.DENY.value,
                "description": "What a client no rule allows gets.",
            },
            "rules": {
                "type": "array",
                "items": {
                    "type": "object",
                    "minProperties": 1,
                    "properties": {
                        "from": client,
                        "to": {"type": "array", "minItems": 1, "items": request},
                    },
                },
            },
        },
    }
    return {"type": "object", "properties": {"spec": spec}, "required": ["spec"]}


def inbound_policy() -> Obj:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{authz.PLURAL}.{authz.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "nodemesh"},
        },
        "spec": {
            "group": authz.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": authz.KIND,
                "listKind": f"{authz.KIND}List",
                "plural": authz.PLURAL,
                "singular": authz.KIND.lower(),
                "shortNames": ["inpol"],
                "categories": ["nodemesh"],
            },
            "versions": [
                {
                    "name": authz.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _inbound_policy_schema()},
                    "additionalPrinterColumns": [
                        {"name": "Default", "type": "string", "jsonPath": ".spec.default"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def objects() -> list[Obj]:
    return [inbound_policy()]
