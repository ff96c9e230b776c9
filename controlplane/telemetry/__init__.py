"""Agent telemetry: report checks, the rolling store, its queries, and the gRPC service."""

from controlplane.telemetry.query import (
    Edge,
    InvalidQuery,
    Resource,
    StatRow,
    UnknownResourceKind,
    edges,
    nodes,
    stat,
)
from controlplane.telemetry.report import BadReport, ParsedReport, Peer, parse_report
from controlplane.telemetry.store import NodeState, TelemetryStore

__all__ = [
    "BadReport",
    "Edge",
    "InvalidQuery",
    "NodeState",
    "ParsedReport",
    "Peer",
    "Resource",
    "StatRow",
    "TelemetryStore",
    "UnknownResourceKind",
    "edges",
    "nodes",
    "parse_report",
    "stat",
]
