"""Resolve a pod's mesh settings from its namespace's and its own labels and annotations."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nodemesh.model import InboundMode, MeshSettings, PortSet

MESH_LABEL = "nodemesh.io/mesh"
INBOUND_MODE = "nodemesh.io/inbound-mode"
OPAQUE_PORTS = "nodemesh.io/opaque-ports"
SKIP_INBOUND_PORTS = "nodemesh.io/skip-inbound-ports"
SKIP_OUTBOUND_PORTS = "nodemesh.io/skip-outbound-ports"
ALLOW_INBOUND_UDP_PORTS = "nodemesh.io/allow-inbound-udp-ports"
# On a Service: "true" makes it router-compatible (nodemesh.model.Service.router).
ROUTER = "nodemesh.io/router"


def namespace_meshed(ns_labels: Mapping[str, Any]) -> bool:
    return ns_labels.get(MESH_LABEL) == "enabled"


def resolve(
    *,
    ns_labels: Mapping[str, Any],
    ns_annotations: Mapping[str, Any],
    pod_labels: Mapping[str, Any],
    pod_annotations: Mapping[str, Any],
    host_network: bool = False,
) -> MeshSettings:
    """The pod's own annotation wins over its namespace's; an unreadable one is reported in
    `errors` and the next level (namespace, then the default) is used instead."""
    errors: list[str] = []
    opted_out = pod_labels.get(MESH_LABEL) == "disabled"
    meshed = namespace_meshed(ns_labels) and not opted_out and not host_network

    def pick(key: str, parse: Any, default: Any) -> Any:
        for where, source in (("pod", pod_annotations), ("namespace", ns_annotations)):
            raw = source.get(key)
            if raw is None:
                continue
            try:
                return parse(str(raw))
            except ValueError as exc:
                errors.append(f"{where} annotation {key}: {exc}")
        return default

    return MeshSettings(
        meshed=meshed,
        inbound_mode=pick(INBOUND_MODE, _inbound_mode, InboundMode.PERMISSIVE),
        opaque_ports=pick(OPAQUE_PORTS, PortSet.parse, PortSet()),
        skip_inbound_ports=pick(SKIP_INBOUND_PORTS, PortSet.parse, PortSet()),
        skip_outbound_ports=pick(SKIP_OUTBOUND_PORTS, PortSet.parse, PortSet()),
        allow_inbound_udp_ports=pick(ALLOW_INBOUND_UDP_PORTS, PortSet.parse, PortSet()),
        errors=tuple(errors),
    )


def _inbound_mode(text: str) -> InboundMode:
    try:
        return InboundMode(text.strip().lower())
    except ValueError:
        raise ValueError(f"{text!r} is not one of permissive, strict") from None
