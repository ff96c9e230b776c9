"""Checking and storing one agent report: what runs where the store lives (the control plane's
telemetry worker process imports this, not the gRPC service around it, to stay small)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf.message import DecodeError

from controlplane.telemetry.report import BadReport, parse_report
from controlplane.telemetry.store import TelemetryStore
from nodemesh.api import telemetry_pb2 as pb

log = logging.getLogger("controlplane.telemetry.service")

# `authenticated_node` of reports a peer replica forwarded (controlplane.agent_auth's
# PEER_REPLICA.node: no node has this name).
PEER = "\x00peer"

StoreGauges = tuple[int, int, int, int]  # series, cells, aggregate cells, series evicted


def store_gauges(store: TelemetryStore) -> StoreGauges:
    """What /metrics shows of the store (a worker process sends these back with each ack)."""
    return (
        len(store.request_series) + len(store.tcp_series),
        store.cells,
        store.groups.cells,
        store.stats.series_evicted,
    )


def take(
    store: TelemetryStore,
    raw: bytes,
    *,
    authenticated_node: str | None,
    is_known_node: Callable[[str], bool],
) -> tuple[pb.ReportAck, str]:
    """Check one serialized report and put it in the store, or refuse it: the ack, and the
    refusal's reason ("" when taken). Runs where the store lives (controlplane.telemetry_worker
    runs it in a worker process)."""
    sequence = 0
    try:
        try:
            report = pb.AgentReport.FromString(raw)
        except DecodeError as e:
            raise BadReport("garbled", f"not an AgentReport: {e}") from e
        sequence = report.sequence
        parsed = parse_report(report, encoded_size=len(raw))
        if authenticated_node not in (None, PEER) and parsed.node != authenticated_node:
            raise BadReport(
                "node_mismatch",
                f"agent of {authenticated_node} reported as {parsed.node}",
            )
        if not is_known_node(parsed.node):
            raise BadReport("unknown_agent", f"no node named {parsed.node!r} in the cluster")
    except BadReport as e:
        log.warning("telemetry: refused report %d (%s): %s", sequence, e.reason, e)
        return pb.ReportAck(sequence=sequence, accepted=False, reason=f"{e.reason}: {e}"), e.reason
    store.ingest(parsed)
    return pb.ReportAck(sequence=sequence, accepted=True), ""
