"""From a run's results: the DESIGN.md targets (met or not, as ratios to direct and to HAProxy
from the same run) and the short Markdown report."""

from __future__ import annotations

from typing import Any

from bench.meshbench import verdict

MB = 1024 * 1024
TARGET_RATE = "1000"


def _get(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def _turns(cell: dict[str, Any]) -> list[dict[str, Any]]:
    """The cell's interleaved turns; a cell from before turns were kept counts as one turn."""
    if "turns" in cell:
        return list(cell["turns"])
    if not cell or "failed" in cell:
        return []
    return [{"p50_ms": cell.get("p50_ms"), "p99_ms": cell.get("p99_ms"),
             "lag_p99_ms": (cell.get("loadgen") or {}).get("lag_p99_ms")}]  # fmt: skip


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per DESIGN.md target. `value` is nodemesh's figure, `haproxy` the pair's
    figure of the same kind, `vs_direct`/`vs_haproxy` the ratios, `met` the verdict (None when
    the run could not measure it)."""
    paths = res["paths"]
    rate = TARGET_RATE if TARGET_RATE in paths["direct"].get("http", {}) else None
    rate = rate or max(paths["direct"].get("http", {"0": None}), key=float)
    d = _get(paths, "direct", "http", rate) or {}
    m = _get(paths, "nodemesh", "http", rate) or {}
    h = _get(paths, "haproxy", "http", rate) or {}
    rows: list[dict[str, Any]] = []
    for q, limit in (("p50", 0.3), ("p99", 1.0)):
        key = f"{q}_ms"
        # The median over the interleaved turns of (path - direct), turn by turn, never the
        # difference of two merged histograms: one noisy direct turn must not decide it.
        am, ah = (verdict.added(_turns(c), _turns(d), key) for c in (m, h))
        met, why = verdict.judge(am, limit)
        rows.append({
            "target": f"added {q} at {rate} rps", "goal": f"<= {limit} ms", "unit": "ms",
            "value": am.median, "spread": am.spread, "haproxy": ah.median,
            "vs_direct": _ratio(m.get(key), d.get(key)), "vs_haproxy": _ratio(am.median, ah.median),
            "met": met, "why": why, "rounds": am.to_dict(),
        })  # fmt: skip
    for kind, q, limit, label in (("newconn", "p50", 1.5, "new connection per request"),
                                  ("grpc", "p99", 1.5, "gRPC unary")):  # fmt: skip
        cells = [_get(paths, path, kind) or {} for path in ("nodemesh", "haproxy", "direct")]
        rv = verdict.ratio(*(_turns(c) for c in cells), f"{q}_ms")
        met, why = verdict.judge_ratio(rv, limit)
        rows.append({
            "target": f"{label} {q} at {_fmt(cells[0].get('rate'))} rps",
            "goal": f"<= {limit}x HAProxy", "unit": "ms", "value": cells[0].get(f"{q}_ms"),
            "spread": None, "haproxy": cells[1].get(f"{q}_ms"),
            "vs_direct": _ratio(cells[0].get(f"{q}_ms"), cells[2].get(f"{q}_ms")),
            "vs_haproxy": rv.median, "met": met, "why": why, "rounds": rv.to_dict(),
        })  # fmt: skip
    cpu_m = _get(m, "proxy_cpu", "s_per_1000_requests")
    cpu_h = _get(h, "proxy_cpu", "s_per_1000_requests")
    behind = _fell_behind(m)
    for label, limit in (("", 0.25), (" (stretch)", 0.12)):
        met, why = _unless_behind(None if cpu_m is None else cpu_m <= limit, behind, None)
        rows.append({
            "target": f"agent CPU per 1000 rps, both agents{label}",
            "goal": f"<= {limit} vCPU", "unit": "vCPU",
            "value": cpu_m, "haproxy": cpu_h, "vs_direct": None,
            "vs_haproxy": _ratio(cpu_m, cpu_h),
            "met": met, "why": why,
        })  # fmt: skip
    # Issue 17's CPU goals, as ratios to the HAProxy pair measured in the same turns.
    opaque = [_get(paths, path, "opaque") or {} for path in ("nodemesh", "haproxy")]
    for label, (cm_cell, ch_cell), limit in (("HTTP/1 keep-alive observed", (m, h), 1.3),
                                             ("opaque TCP", opaque, 1.0)):  # fmt: skip
        cm = _get(cm_cell, "proxy_cpu", "s_per_1000_requests")
        ch = _get(ch_cell, "proxy_cpu", "s_per_1000_requests")
        vs = _ratio(cm, ch)
        met, why = _unless_behind(
            None if vs is None else vs <= limit,
            _fell_behind(cm_cell, "nodemesh"),
            _fell_behind(ch_cell, "HAProxy"),
        )
        rows.append({
            "target": f"agent CPU per 1000 rps vs HAProxy, {label}",
            "goal": f"<= {limit}x HAProxy", "unit": "vCPU", "value": cm, "haproxy": ch,
            "vs_direct": None, "vs_haproxy": vs,
            "met": met, "why": why,
        })  # fmt: skip
    r = res["resources"]
    with_pods = r.get("rss_with_idle_pods_bytes") or {}
    rss_pods = max(with_pods.values()) / MB if with_pods else None
    rss_h_idle = sum((_get(r, "rss_idle_bytes", "haproxy") or {}).values()) / MB or None
    rows.append({
        "target": f"agent RSS with {_get(r, 'idle_pods', 'count')} pods enrolled",
        "goal": "<= 60 MB", "unit": "MB",
        "value": None if rss_pods is None else round(rss_pods, 1),
        "haproxy": None if rss_h_idle is None else round(rss_h_idle / 2, 1),
        "vs_direct": None, "vs_haproxy": _ratio(rss_pods, rss_h_idle and rss_h_idle / 2),
        "met": None if rss_pods is None else rss_pods <= 60,
    })  # fmt: skip
    idle = _get(r, "rss_idle_bytes", "nodemesh") or {}
    peak = {k.split("/", 1)[1]: v for k, v in (r.get("rss_peak_under_load_bytes") or {}).items()
            if k.startswith("nodemesh/")}  # fmt: skip
    growth = [(peak[k] - idle[k]) / MB for k in idle if k in peak]
    worst = max(growth) if growth else None
    rows.append({
        "target": "agent RSS flat under load (peak minus idle, worst agent)",
        "goal": "<= 5 MB", "unit": "MB", "value": None if worst is None else round(worst, 1),
        "haproxy": None, "vs_direct": None, "vs_haproxy": None,
        "met": None if worst is None else worst <= 5,
    })  # fmt: skip
    rows += _search_targets(paths)
    rows += _l7_targets(paths, rate)
    bm = _get(paths, "nodemesh", "bulk", "gbit_s")
    bh = _get(paths, "haproxy", "bulk", "gbit_s")
    bd = _get(paths, "direct", "bulk", "gbit_s")
    rows.append({
        "target": "bulk throughput, one stream", "goal": ">= 0.5x HAProxy", "unit": "Gbit/s",
        "value": bm, "haproxy": bh, "vs_direct": _ratio(bm, bd), "vs_haproxy": _ratio(bm, bh),
        "met": None if _ratio(bm, bh) is None else (_ratio(bm, bh) or 0) >= 0.5,
    })  # fmt: skip
    return rows


L7_RATIO_LIMIT = 1.5
# A CPU figure from a run whose median latency was above this is no figure: a path that fell
# behind its rate handles requests in batches, and each then costs less CPU (20-40 % less,
# bench/results/cpu17), so it would read better than it is. (bench/dp_cpu.py uses the same.)
CPU_BEHIND_P50_MS = 2.0


def _unless_behind(
    met: bool | None, ours_behind: str | None, theirs_behind: str | None
) -> tuple[bool | None, str | None]:
    """A CPU verdict that a path falling behind could have turned: our CPU reading low can make
    a "met" (a "no" stands), HAProxy's reading low can make a "no" (a "met" stands)."""
    if met is True and ours_behind:
        return None, ours_behind
    if met is False and theirs_behind:
        return None, theirs_behind
    return met, None


def _fell_behind(cell: dict[str, Any], who: str = "nodemesh") -> str | None:
    p50 = cell.get("p50_ms") if cell else None
    if p50 is not None and p50 > CPU_BEHIND_P50_MS:
        return (
            f"invalid: {who} fell behind its rate (p50 {_fmt(p50)} ms > {CPU_BEHIND_P50_MS} ms),"
            " so its requests were batched and its CPU reads low"
        )
    return None


SEARCH_RATIO_GOAL = 0.5


def _search_targets(paths: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 17's highest rates, as ratios to the HAProxy pair's from the same run: keep-alive
    requests with added p99 under its limit, and new connections per second with added p99
    under theirs. No verdict when neither path passed any rate, or when HAProxy's search stopped
    at the plan's ceiling without failing (its rate is then a lower bound) and nodemesh reached
    half of it, or when a search stopped at a step the machine's noise left undecided and the
    bounds that leaves do not settle the ratio."""
    rows: list[dict[str, Any]] = []
    for key, label in (("search", "highest rate, keep-alive requests/s"),
                       ("newconn_search", "highest rate, new connections/s")):  # fmt: skip
        m = _get(paths, "nodemesh", key) or {}
        h = _get(paths, "haproxy", key) or {}
        if not m and not h:
            continue  # a run from before this search
        limit = m.get("limit_added_p99_ms") or h.get("limit_added_p99_ms")
        vm, vh = m.get("max_rate"), h.get("max_rate")
        vs = _ratio(vm, vh)
        met: bool | None
        why = None
        um, uh = m.get("undecided_at"), h.get("undecided_at")
        if um is not None or uh is not None:
            # A search stopped at a step the machine's noise left undecided: its rate is only a
            # lower bound (or unknown). A verdict stands only where the bounds settle it.
            if um is None and vh is not None and (vm is None or (vs or 0) < SEARCH_RATIO_GOAL):
                met = False  # HAProxy's real rate is at least vh: the ratio only falls
            elif uh is None and vm is not None and (vh is None or _settled_above(vs, h)):
                met = True  # nodemesh's real rate is at least vm: the ratio only rises
            else:
                undecided = [f"{name}'s step at {_fmt(at)}/s" for name, at in
                             (("nodemesh", um), ("HAProxy", uh)) if at is not None]  # fmt: skip
                why = (
                    f"invalid: noise: {' and '.join(undecided)} undecided (fewer than 2 turns "
                    "whose direct run's load generator kept up)"
                )
                met = None
        elif vm is None and vh is None:
            met, why = None, "invalid: no rate passed on either path"
        elif vm is None:
            met = False  # HAProxy passed at a rate where nodemesh passed at none
        elif vh is None:
            met = True  # nodemesh passed at a rate where HAProxy passed at none
        elif vs is not None and vs < SEARCH_RATIO_GOAL:
            met = False  # HAProxy's real highest rate is at least vh: the ratio only falls
        elif h.get("bounded_by") is None:
            # HAProxy reached the plan's ceiling without failing: its highest rate is only a
            # lower bound, and so the ratio an upper bound, which cannot make a target met.
            met, why = None, "invalid: HAProxy's search reached the plan's ceiling"
        else:
            met = True
        rows.append({
            "target": f"{label} with added p99 < {_fmt(limit)} ms",
            "goal": f">= {SEARCH_RATIO_GOAL}x HAProxy", "unit": "/s", "value": vm,
            "haproxy": vh, "vs_direct": None, "vs_haproxy": vs, "met": met, "why": why,
        })  # fmt: skip
    return rows


def _settled_above(ratio: float | None, haproxy: dict[str, Any]) -> bool:
    """At or over the goal against a HAProxy rate bounded by a failure (not the plan's ceiling)."""
    return ratio is not None and ratio >= SEARCH_RATIO_GOAL and bool(haproxy.get("bounded_by"))


def _l7_targets(paths: dict[str, Any], rate: str) -> list[dict[str, Any]]:
    """The L7 path (nodemesh-l7) against HAProxy in HTTP mode doing the same (haproxy-http),
    turn by turn at the target rate: its p50, p99 and CPU as ratios to HAProxy's. Empty for a
    run from before the L7 paths."""
    if "nodemesh-l7" not in paths or "haproxy-http" not in paths:
        return []
    d = _get(paths, "direct", "http", rate) or {}
    m = _get(paths, "nodemesh-l7", "http", rate) or {}
    h = _get(paths, "haproxy-http", "http", rate) or {}
    rows: list[dict[str, Any]] = []
    for q in ("p50", "p99"):
        key = f"{q}_ms"
        rv = verdict.ratio(_turns(m), _turns(h), _turns(d), key)
        met, why = verdict.judge_ratio(rv, L7_RATIO_LIMIT)
        rows.append({
            "target": f"L7 route {q} at {rate} rps (nodemesh-l7 vs haproxy-http)",
            "goal": f"<= {L7_RATIO_LIMIT}x HAProxy HTTP", "unit": "ms", "value": m.get(key),
            "spread": None, "haproxy": h.get(key), "vs_direct": _ratio(m.get(key), d.get(key)),
            "vs_haproxy": rv.median, "met": met, "why": why, "rounds": rv.to_dict(),
        })  # fmt: skip
    cpu_m = _get(m, "proxy_cpu", "s_per_1000_requests")
    cpu_h = _get(h, "proxy_cpu", "s_per_1000_requests")
    vs = _ratio(cpu_m, cpu_h)
    met, why = _unless_behind(
        None if vs is None else vs <= L7_RATIO_LIMIT,
        _fell_behind(m, "nodemesh-l7"),
        _fell_behind(h, "haproxy-http"),
    )
    rows.append({
        "target": "L7 route CPU s per 1000 requests, both agents (vs haproxy-http: A + both B)",
        "goal": f"<= {L7_RATIO_LIMIT}x HAProxy HTTP", "unit": "s", "value": cpu_m,
        "haproxy": cpu_h, "vs_direct": None, "vs_haproxy": vs, "met": met, "why": why,
    })  # fmt: skip
    return rows


def _l7_section(res: dict[str, Any]) -> list[str]:
    paths = res["paths"]
    if "nodemesh-l7" not in paths:
        return []
    route = res.get("l7_route") or {}
    lines = [
        "", "## L7 path: nodemesh-l7 vs haproxy-http, side by side", "",
        f"Both balance each request across {_fmt(route.get('endpoints'))} server pods over mTLS"
        f" with a {_fmt(route.get('request_timeout_s'))} s request timeout and up to "
        f"{_fmt(route.get('retry_attempts'))} retries on {route.get('retry_codes')}: nodemesh "
        f"by an HTTPRoute (retries under the default budget), HAProxy by `mode http`, `balance "
        "roundrobin`, `timeout server`, `retries` and `retry-on` (no budget). The same open-loop"
        " rates as the other paths, in the same interleaved turns; RPS: answered per second.", "",
        "| path | rate | RPS answered | p50 ms | p99 ms | errors | CPU s per 1000 req "
        "| proxy vCPU |", "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for rate in paths["direct"].get("http", {}):
        for path in ("direct", "nodemesh", "haproxy", "nodemesh-l7", "haproxy-http"):
            s = _get(paths, path, "http", rate)
            if not s or "failed" in s:
                lines.append(f"| {path} | {rate} | {'failed' if s else '-'} | | | | | |")
                continue
            lines.append(
                f"| {path} | {rate} | {_fmt(s.get('achieved_rps'))} | {_fmt(s.get('p50_ms'))} | "
                f"{_fmt(s.get('p99_ms'))} | {s.get('errors')} | "
                f"{_fmt(_get(s, 'proxy_cpu', 's_per_1000_requests'))} | "
                f"{_fmt(_get(s, 'proxy_cpu', 'vcpu'))} |"
            )
    return lines


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _search_text(search: dict[str, Any] | None) -> str:
    if not search:
        return "-"
    rate, bound = search.get("max_rate"), search.get("bounded_by")
    if bound:
        text = f"{_fmt(rate)} (fails at {_fmt(bound)})"
    else:
        text = f">= {_fmt(rate)}" if rate is not None else "-"
    if search.get("undecided_at") is not None:
        text += f", undecided at {_fmt(search['undecided_at'])} (noise)"
    return text


def _lat_row(name: str, s: dict[str, Any] | None) -> str:
    if not s or "failed" in s:
        return f"| {name} | - | - | - | - | - | - | {'failed' if s else '-'} |"
    cells = [s.get(k) for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")]
    return (f"| {name} | " + " | ".join(_fmt(c) for c in cells)
            + f" | {s.get('completed')}/{s.get('scheduled')} | {s.get('errors')} |")  # fmt: skip


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# nodemesh benchmark",
        "",
        f"- date: {res['date']}; commit: `{res['commit']}`"
        + (" (uncommitted changes)" if res.get("dirty") else ""),
        f"- machine: {m['nproc']} x {m['cpu_model']}, kernel {m['kernel']}, load average "
        f"{m['loadavg_start']} at start, {m['loadavg_end']} at end (shared machine)",
        f"- lab: 2 nodes; client pods on node1, servers on node2; nodemesh tunnel speaks TLS: "
        f"{_fmt(res.get('nodemesh_tunnel_tls'))}; run took {res.get('elapsed_s')} s",
        "",
        "## Targets (DESIGN.md)",
        "",
        "Added figures: the median over the interleaved turns of (path - direct), turn by turn,"
        " +- half their range; a turn whose load generator lagged (p99 > "
        f"{verdict.LAG_P99_LIMIT_MS} ms) or whose direct run caught a noise burst is rerun and "
        'left out. A negative or noise-dominated difference is never "met": it reads '
        '"invalid" with the reason.',
        "",
        "| target | goal | nodemesh | HAProxy pair | vs direct | vs HAProxy | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in res["targets"]:
        value = _fmt(t["value"]) + (f" +-{_fmt(t['spread'])}" if t.get("spread") else "")
        met = "invalid" if t["met"] is None and t.get("why") else _fmt(t["met"])
        why = (t.get("why") or "").removeprefix("invalid: ")
        lines.append(
            f"| {t['target']} | {t['goal']} | {value} {t['unit']} | "
            f"{_fmt(t['haproxy'])} | {_fmt(t['vs_direct'])} | {_fmt(t['vs_haproxy'])} | "
            f"{met}{' (' + why + ')' if why else ''} |"
        )
    lines += ["", "## Latency, ms from the scheduled send time", "",
              "| run | p50 | p90 | p99 | p99.9 | max | answered | errors |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    paths = res["paths"]
    for rate in paths["direct"].get("http", {}):
        for path in paths:
            lines.append(_lat_row(f"{path} HTTP/1.1 keep-alive {rate} rps",
                                  _get(paths, path, "http", rate)))  # fmt: skip
    for kind, label in (("grpc", "gRPC unary"), ("newconn", "HTTP new connection each")):
        for path in paths:
            s = _get(paths, path, kind)
            if s is None and path in ("nodemesh-l7", "haproxy-http"):
                continue  # HTTP-only paths: no gRPC run
            lines.append(_lat_row(f"{path} {label} {_fmt(s and s.get('rate'))} rps", s))
    lp = res.get("loadgen_loopback")
    lines.append(_lat_row(f"load generator alone, loopback {_fmt(lp and lp.get('rate'))} rps", lp))
    lines += ["", "## Proxy CPU, throughput, search", "",
              "| path | CPU s per 1000 req at 1000 rps | vCPU at 1000 rps | bulk Gbit/s "
              "| max rate with added p99 < 2 ms | max new connections/s with added p99 < 5 ms |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for path in paths:
        http = _get(paths, path, "http", TARGET_RATE) or {}
        lines.append(
            f"| {path} | {_fmt(_get(http, 'proxy_cpu', 's_per_1000_requests'))} | "
            f"{_fmt(_get(http, 'proxy_cpu', 'vcpu'))} | {_fmt(_get(paths, path, 'bulk', 'gbit_s'))}"
            f" | {_search_text(_get(paths, path, 'search'))}"
            f" | {_search_text(_get(paths, path, 'newconn_search'))} |"
        )
    lines += _l7_section(res)
    r = res["resources"]
    lines += ["", "## Memory (RSS, MB)", ""]
    for key, label in (("rss_idle_bytes", "idle"), ("rss_after_load_bytes", "after load")):
        for path, procs in (r.get(key) or {}).items():
            lines.append(f"- {label}, {path}: " + ", ".join(
                f"{k} {v / MB:.1f}" for k, v in procs.items()))  # fmt: skip
    peak = r.get("rss_peak_under_load_bytes") or {}
    lines.append("- peak under load: " + ", ".join(f"{k} {v / MB:.1f}" for k, v in peak.items()))
    for node, procs in (r.get("rss_with_idle_pods_by_process_bytes") or {}).items():
        lines.append(f"- {node} with idle pods, by process (the figure above is their sum): "
                     + ", ".join(f"{k} {v / MB:.1f}" for k, v in procs.items()))  # fmt: skip
    for key, label in (("rss_with_idle_pods_bytes", "with idle pods enrolled"),
                       ("rss_after_idle_pods_left_bytes", "after they left")):  # fmt: skip
        lines.append(f"- {label} ({_get(r, 'idle_pods', 'count')} on "
                     f"{_get(r, 'idle_pods', 'node')}): " + ", ".join(
            f"{k} {v / MB:.1f}" for k, v in (r.get(key) or {}).items()))  # fmt: skip
    runs = [s for path in paths.values() for s in (path.get("http") or {}).values()]
    runs = [s for s in runs if "loadgen" in s]
    lag99 = max((s["loadgen"]["lag_p99_ms"] or 0 for s in runs), default=None)
    per_k = [s["loadgen"]["cpu_s"] / (s["completed"] / 1000) for s in runs if s["completed"]]
    lines += [
        "",
        "## The load generator's own share",
        "",
        f"- C, epoll, timerfd, open loop, {res['plan']['conns']} keep-alive connections; "
        f"alone against a server on loopback at {_fmt(lp and lp.get('rate'))} rps: p50 "
        f"{_fmt(lp and lp.get('p50_ms'))} ms, p99 {_fmt(lp and lp.get('p99_ms'))} ms",
        f"- its wake-up lag behind the schedule, worst p99 over the keep-alive runs: "
        f"{_fmt(lag99)} ms (counted in every latency above, on every path alike)",
        f"- its CPU: {_fmt(max(per_k, default=None))} s per 1000 requests at most",
        "",
        "Failed cells, full figures and histograms: the JSON next to this file.",
        "",
    ]
    return "\n".join(lines)
