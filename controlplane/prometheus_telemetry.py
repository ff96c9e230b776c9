"""The telemetry port answered from Prometheus (`--prometheus-url`): Stat and Edges in PromQL
over the agents' Linkerd-named metrics; agents and enrolled pods still come from the reports.

Counts are exact, not extrapolated: each series' value at the end of the window minus its value
at the window's start (`offset`), or its whole value when it began inside the window (or its
counter was reset). `increase()` would extrapolate to the window's edges and give fractions.
Latency quantiles interpolate inside Linkerd's millisecond buckets as `histogram_quantile` does,
so they agree with the embedded store within one bucket. The `node` label comes from the scrape
configuration (kubernetes_sd or the lab's file_sd), not from the agent.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING

import httpx

from controlplane.telemetry_port import (
    AgentState,
    BadQuery,
    EdgeStats,
    RouteRow,
    Selector,
    StatRow,
    StoreTelemetry,
)

if TYPE_CHECKING:
    from controlplane.telemetry_worker import WorkerTelemetry

QUANTILES = (0.5, 0.95, 0.99)
MIN_WINDOW_S, MAX_WINDOW_S = 10, 3600
# Label of the resource on the local side (inbound: the server; outbound: the client) and on the
# destination side of outbound series.
_LOCAL = {"deployment": "deployment", "pod": "pod", "namespace": "namespace", "service": ""}
_DST = {
    "deployment": "dst_deployment",
    "pod": "dst_pod",
    "namespace": "dst_namespace",
    "service": "dst_service",
}


class PrometheusUnavailable(RuntimeError):
    """Prometheus did not answer or answered with an error; the message names the URL."""


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _matchers(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}={_quote(v)}" for k, v in pairs) + "}"


def delta(metric: str, matchers: str, window_s: int, by: Iterable[str]) -> str:
    """PromQL: what each series of a counter gained over the window, summed by `by`."""
    last = f"last_over_time({metric}{matchers}[{window_s}s])"
    start = f"{metric}{matchers} offset {window_s}s"
    return f"sum by ({','.join(by)}) ((({last} - {start}) >= 0) or {last})"


def bucket_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative buckets {le: count} (le may be inf)."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # the highest finite bound, as Prometheus answers
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


class PrometheusTelemetry:
    """The TelemetryPort over a Prometheus HTTP API; `stat` and `edges` are coroutines."""

    def __init__(
        self, url: str, reports: StoreTelemetry | WorkerTelemetry, *, timeout_s: float = 10.0
    ) -> None:
        self.url = url.rstrip("/")
        self.reports = reports
        self.timeout_s = timeout_s

    async def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query; [(labels, value)]."""
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                resp = await client.post(f"{self.url}/api/v1/query", data={"query": promql})
        except httpx.HTTPError as exc:
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} is unreachable: {str(exc) or type(exc).__name__}"
            ) from exc
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if resp.status_code != 200 or body.get("status") != "success":
            raise PrometheusUnavailable(
                f"Prometheus at {self.url} answered {resp.status_code}: "
                f"{body.get('error') or resp.text[:200]}"
            )
        data = body["data"]
        if data.get("resultType") != "vector":
            raise PrometheusUnavailable(f"Prometheus at {self.url}: expected a vector answer")
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    # --- stat ------------------------------------------------------------------------------

    async def stat(
        self,
        *,
        group_by: str,
        namespace: str,
        source: Selector | None,
        destination: Selector | None,
        window_s: int,
    ) -> list[StatRow]:
        if source is not None and destination is not None:
            raise BadQuery("use --from or --to, not both")
        if "node" in (getattr(source, "kind", ""), getattr(destination, "kind", "")):
            raise BadQuery("node cannot be used with --from/--to")
        if destination is not None and group_by == "service":
            raise BadQuery("svc has no outbound traffic of its own; use --from")
        if not MIN_WINDOW_S <= window_s <= MAX_WINDOW_S:
            raise BadQuery(f"window must be between {MIN_WINDOW_S}s and {MAX_WINDOW_S}s")
        match, group = self._plan(group_by, namespace, source, destination)
        m = _matchers(match)
        w = window_s
        by = [label for label in group if label]
        responses = await self.query(delta("response_total", m, w, [*by, "classification"]))
        latency = await self.query(delta("response_latency_ms_bucket", m, w, [*by, "le"]))
        read = await self.query(delta("tcp_read_bytes_total", m, w, by))
        write = await self.query(delta("tcp_write_bytes_total", m, w, by))
        current = await self.query(f"sum by ({','.join(by)}) (tcp_open_connections{m})")
        denied_http: list[tuple[dict[str, str], float]] = []
        denied_tcp: list[tuple[dict[str, str], float]] = []
        if destination is None and source is None and group_by != "service":
            denied_http = await self.query(
                delta("inbound_http_authz_deny_total", m, w, [*by, "protocol"])
            )
            denied_tcp = await self.query(delta("inbound_tcp_authz_deny_total", m, w, by))

        rows: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        buckets: dict[tuple[str, str], dict[float, float]] = defaultdict(dict)

        def key(labels: dict[str, str]) -> tuple[str, str] | None:
            ns_label, name_label = group
            name = labels.get(name_label, "")
            if not name:
                return None
            return (labels.get(ns_label, "") if ns_label else "", name)

        for labels, value in responses:
            if (k := key(labels)) is not None:
                rows[k]["requests"] += value
                if labels.get("classification") == "success":
                    rows[k]["successes"] += value
        for labels, value in latency:
            if (k := key(labels)) is not None:
                le = float(labels["le"])
                buckets[k][le] = buckets[k].get(le, 0.0) + value
        for name, table in (("read", read), ("write", write), ("open", current)):
            for labels, value in table:
                if (k := key(labels)) is not None:
                    rows[k][name] += value
        # As the embedded store counts them: a denied request is a request the server
        # answered (403 a success by Linkerd's rules, gRPC PERMISSION_DENIED a failure).
        for labels, value in denied_http:
            if (k := key(labels)) is not None:
                rows[k]["denied"] += value
                rows[k]["requests"] += value
                if labels.get("protocol") != "grpc":
                    rows[k]["successes"] += value
        for labels, value in denied_tcp:
            if (k := key(labels)) is not None:
                rows[k]["denied"] += value
        out = []
        for k in sorted(rows):
            r = rows[k]
            if not any(r.values()):
                continue
            qs = [bucket_quantile(q, buckets.get(k, {})) for q in QUANTILES]
            requests, successes = round(r["requests"]), round(r["successes"])
            out.append(
                StatRow(
                    kind=group_by,
                    namespace=k[0],
                    name=k[1],
                    window_s=float(window_s),
                    success=successes,
                    failure=requests - successes,
                    known_latency_ms=dict(zip(QUANTILES, qs, strict=True)),
                    tcp_open_connections=round(r["open"]),
                    read_bytes=round(r["read"]),
                    write_bytes=round(r["write"]),
                    authz_denied=round(r["denied"]),
                )
            )
        return out

    @staticmethod
    def _plan(
        group_by: str, namespace: str, source: Selector | None, destination: Selector | None
    ) -> tuple[list[tuple[str, str]], tuple[str, str]]:
        """Label matchers and the (namespace label, name label) a row is keyed by; the same
        choice of series as controlplane.telemetry.query.stat."""
        kind = group_by
        if kind == "node":
            return [], ("", "node")
        if kind == "namespace":
            namespace = ""
        if destination is not None or source is not None or kind == "service":
            match = [("direction", "outbound")]
            if destination is not None:
                # The group is the client (local side); the destination filters.
                match += _selected(destination, prefix="dst_")
                if namespace:
                    match.append(("namespace", namespace))
                return match, _local_group(kind)
            if source is not None:
                match += _selected(source, prefix="")
            if namespace:
                match.append(("dst_namespace", namespace))
            return match, _dst_group(kind)
        match = [("direction", "inbound")]
        if namespace:
            match.append(("namespace", namespace))
        return match, _local_group(kind)

    # --- edges -----------------------------------------------------------------------------

    async def edges(self, *, kind: str, namespace: str, window_s: int) -> list[EdgeStats]:
        if not MIN_WINDOW_S <= window_s <= MAX_WINDOW_S:
            raise BadQuery(f"window must be between {MIN_WINDOW_S}s and {MAX_WINDOW_S}s")
        src_label, dst_label = _LOCAL[kind], _DST[kind]
        by = ["namespace", src_label, "dst_namespace", dst_label, "server_id", "tls"]
        out_m = '{direction="outbound"}'
        requests = await self.query(delta("response_total", out_m, window_s, by))
        conns = await self.query(delta("tcp_open_total", out_m, window_s, by))
        clients = await self.query(
            delta(
                "response_total",
                '{direction="inbound",tls="true"}',
                window_s,
                ["namespace", src_label, "client_id"],
            )
        )
        found: dict[tuple[str, str, str, str], dict[str, object]] = {}
        for table, field in ((requests, "requests"), (conns, "connections")):
            for labels, value in table:
                ident = (
                    labels.get("namespace", ""),
                    labels.get(src_label, ""),
                    labels.get("dst_namespace", ""),
                    labels.get(dst_label, ""),
                )
                if not ident[1] or not ident[3] or value <= 0:
                    continue
                if namespace and namespace not in (ident[0], ident[2]):
                    continue
                e = found.setdefault(
                    ident, {"requests": 0.0, "connections": 0.0, "tls": True, "server": set()}
                )
                e[field] = float(e[field]) + value  # type: ignore[arg-type]
                e["tls"] = bool(e["tls"]) and labels.get("tls") == "true"
                if labels.get("server_id"):
                    e["server"].add(labels["server_id"])  # type: ignore[attr-defined]
        # Outbound series do not name the client's own identity; the server's inbound series
        # do (client_id): those from the client's namespace stand for it.
        seen: dict[tuple[str, str], set[str]] = defaultdict(set)
        for labels, value in clients:
            if value > 0 and labels.get("client_id"):
                seen[(labels.get("namespace", ""), labels.get(src_label, ""))].add(
                    labels["client_id"]
                )
        result = []
        for ident in sorted(found):
            e = found[ident]
            client_ids = {
                c for c in seen.get((ident[2], ident[3]), set()) if f"/ns/{ident[0]}/" in c
            }
            result.append(
                EdgeStats(
                    src=Selector(kind, ident[0], ident[1]),
                    dst=Selector(kind, ident[2], ident[3]),
                    src_identity=",".join(sorted(client_ids)),
                    dst_identity=",".join(sorted(e["server"])),  # type: ignore[call-overload]
                    requests=round(float(e["requests"])),  # type: ignore[arg-type]
                    tcp_connections=round(float(e["connections"])),  # type: ignore[arg-type]
                    tls=bool(e["tls"]),
                )
            )
        return result

    # --- routes ----------------------------------------------------------------------------

    async def routes(
        self, *, services: list[tuple[str, str]], source: Selector | None, window_s: int
    ) -> list[RouteRow]:
        """The agents' route_response_total and route_response_latency_ms (the `route`
        label) for each Service asked about, as the embedded store's route rows."""
        if not MIN_WINDOW_S <= window_s <= MAX_WINDOW_S:
            raise BadQuery(f"window must be between {MIN_WINDOW_S}s and {MAX_WINDOW_S}s")
        by = ["dst_namespace", "dst_service", "route"]
        counts: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        buckets: dict[tuple[str, str, str], dict[float, float]] = defaultdict(dict)
        for ns, name in services:
            match = [("direction", "outbound"), ("dst_namespace", ns), ("dst_service", name)]
            if source is not None:
                match += _selected(source, prefix="")
            m = _matchers(match)
            for labels, value in await self.query(
                delta("route_response_total", m, window_s, [*by, "classification"])
            ):
                k = (labels.get("dst_namespace", ""), labels.get("dst_service", ""),
                     labels.get("route", ""))  # fmt: skip
                counts[k][0] += value
                if labels.get("classification") == "success":
                    counts[k][1] += value
            for labels, value in await self.query(
                delta("route_response_latency_ms_bucket", m, window_s, [*by, "le"])
            ):
                k = (labels.get("dst_namespace", ""), labels.get("dst_service", ""),
                     labels.get("route", ""))  # fmt: skip
                le = float(labels["le"])
                buckets[k][le] = buckets[k].get(le, 0.0) + value
        out = []
        for k in sorted(counts):
            requests, successes = (round(v) for v in counts[k])
            if not requests or not k[2]:
                continue
            qs = [bucket_quantile(q, buckets.get(k, {})) for q in QUANTILES]
            out.append(
                RouteRow(
                    kind="service",
                    namespace=k[0],
                    name=k[1],
                    window_s=float(window_s),
                    success=successes,
                    failure=requests - successes,
                    known_latency_ms=dict(zip(QUANTILES, qs, strict=True)),
                    route=k[2],
                )
            )
        return out

    # --- from the reports ------------------------------------------------------------------

    def agents(self) -> list[AgentState] | Awaitable[list[AgentState]]:
        return self.reports.agents()

    def enrolled_pods(self) -> set[tuple[str, str, str]] | Awaitable[set[tuple[str, str, str]]]:
        return self.reports.enrolled_pods()


def _local_group(kind: str) -> tuple[str, str]:
    if kind == "namespace":
        return ("", "namespace")
    if kind == "service":
        raise BadQuery("svc has no outbound traffic of its own; use --from")
    return ("namespace", _LOCAL[kind])


def _dst_group(kind: str) -> tuple[str, str]:
    if kind == "namespace":
        return ("", "dst_namespace")
    return ("dst_namespace", _DST[kind])


def _selected(sel: Selector, *, prefix: str) -> list[tuple[str, str]]:
    out = []
    if sel.kind == "namespace":
        if sel.name:
            out.append((f"{prefix}namespace", sel.name))
        return out
    if sel.namespace:
        out.append((f"{prefix}namespace", sel.namespace))
    if sel.name:
        label = _DST[sel.kind] if prefix else _LOCAL[sel.kind]
        if not label:
            raise BadQuery("svc cannot be a source; use --to svc/NAME")
        out.append((label, sel.name))
    return out
