"""One benchmark run on the lab: set up the paths, run every workload on each side by side, read
the proxies' CPU and memory, and return everything as one JSON-ready dict.

The L4 paths (direct, nodemesh, haproxy) take every workload; the L7 paths (nodemesh-l7,
haproxy-http: HTTP only) take the HTTP keep-alive rates and the new-connection run, in the
same interleaved turns as the others."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.meshbench import checks, haproxy, manifests, native, procstat, verdict, workloads
from bench.meshbench.labctl import Lab
from bench.meshbench.manifests import (
    GRPC_PORT,
    HTTP_PORT,
    IPERF_PORT,
    L4_PATHS,
    NAMESPACES,
    OPAQUE_PORT,
    PATHS,
)
from bench.meshbench.plan import RunPlan
from bench.meshbench.workloads import Target

log = logging.getLogger("meshbench")

CLIENT_NODE, SERVER_NODE = "node1", "node2"
MB = 1024 * 1024
# How many more times a search step the machine's noise left undecided gets its rounds.
SEARCH_RETRIES = 1


@dataclass
class PathSetup:
    name: str
    target: Target
    # What proxies this path's traffic: label -> PID (agents by node, haproxy-a/-b).
    proxies: dict[str, int] = field(default_factory=dict)


@dataclass
class Bench:
    lab: Lab
    plan: RunPlan
    bins: dict[str, Path]
    grpc_script: Path
    paths: dict[str, PathSetup] = field(default_factory=dict)
    only: tuple[str, ...] = PATHS  # the paths deployed and measured (`direct` first)

    # --- setting up -----------------------------------------------------------------------

    def deploy(self, workdir: Path) -> None:
        hdir = workdir / "haproxy"
        hdir.mkdir()
        certs = haproxy.write_certs(hdir)
        server_host = f"{manifests.SERVICE}.{NAMESPACES['haproxy']}.svc.cluster.local"
        client_cfg = haproxy.client_config(certs=certs, server_host=server_host)
        (hdir / "client.cfg").write_text(client_cfg)
        (hdir / "server.cfg").write_text(haproxy.server_config(certs=certs))
        (hdir / "capture.sh").write_text(haproxy.capture_script())
        (hdir / "server-http.cfg").write_text(
            haproxy.server_config(certs=certs, app_ports=(HTTP_PORT,))
        )
        (hdir / "capture-http.sh").write_text(
            haproxy.capture_script({HTTP_PORT: haproxy.PORTS[HTTP_PORT]})
        )
        bins = manifests.Binaries(http_server=self.bins["server"], grpc_script=self.grpc_script)
        objects: list[dict[str, Any]] = []
        for path in self.only:
            objects += manifests.path_objects(
                path, bins=bins, client_node=CLIENT_NODE, server_node=SERVER_NODE,
                haproxy_dir=hdir, files=workdir,
            )  # fmt: skip
        later = [o for o in objects if manifests.deferred(o)]
        self.lab.apply(
            manifests.render([o for o in objects if not manifests.deferred(o)]), timeout=240
        )
        # haproxy-http's haproxy-A balances over the server pods' own addresses.
        http_ns = NAMESPACES["haproxy-http"]
        http_servers = [p["ip"] for p in self.lab.pods(http_ns, "server")] if later else []
        if later and len(http_servers) != manifests.L7_REPLICAS:
            raise RuntimeError(f"haproxy-http: {len(http_servers)} server pods ready, "
                               f"expected {manifests.L7_REPLICAS}")  # fmt: skip
        (hdir / "client-http.cfg").write_text(
            haproxy.http_client_config(
                certs=certs, servers=http_servers, timeout_s=manifests.ROUTE_TIMEOUT_S,
                retries=manifests.ROUTE_RETRY_ATTEMPTS, retry_codes=manifests.ROUTE_RETRY_CODES,
            )
        )  # fmt: skip
        if later:
            self.lab.apply(manifests.render(later), timeout=120)
        agents = self.lab.agent_pids()
        for path in self.only:
            ns = NAMESPACES[path]
            client = self.lab.pod(ns, "client")
            target = Target(self.lab.pod_netns(client), self.lab.service_ip(ns, manifests.SERVICE))
            proxies: dict[str, int] = {}
            if path in ("nodemesh", "nodemesh-l7"):
                proxies = {f"agent-{node}": pid for node, pid in agents.items()}
            elif path == "haproxy-http":
                a = self.lab.container_pids(namespace=ns, pod_prefix="client",
                                            container="haproxy-a")  # fmt: skip
                bs = self.lab.container_pids_by_pod(namespace=ns, pod_prefix="server",
                                                    container="haproxy-b")  # fmt: skip
                proxies = {"haproxy-a": a[CLIENT_NODE]}
                proxies.update({f"haproxy-b{i}": pid for i, pid in enumerate(bs.values())})
            elif path == "haproxy":
                pids = self.lab.container_pids
                a = pids(namespace=ns, pod_prefix="client", container="haproxy-a")
                b = pids(namespace=ns, pod_prefix="server", container="haproxy-b")
                proxies = {"haproxy-a": a[CLIENT_NODE], "haproxy-b": b[SERVER_NODE]}
            self.paths[path] = PathSetup(path, target, proxies)

    # --- measuring ------------------------------------------------------------------------

    def _with_cpu(
        self, path: str, run: Callable[[], dict[str, Any]], *, requests: float
    ) -> dict[str, Any]:
        proxies = self.paths[path].proxies
        before = {k: procstat.cpu_seconds([pid]) for k, pid in proxies.items()}
        started = time.monotonic()
        try:
            result = run()
        except workloads.WorkloadError as e:
            # One workload failing on one path (a data plane under work) must not cost the
            # rest of the run: it is recorded as that cell's result.
            log.warning("%s: %s", path, e)
            return {"failed": str(e)[-1000:]}
        wall = time.monotonic() - started
        if proxies:
            used = {
                k: round(procstat.cpu_seconds([pid]) - before[k], 3) for k, pid in proxies.items()
            }
            total = sum(used.values())
            result["proxy_cpu"] = {
                "seconds": used,
                "total_s": round(total, 3),
                "wall_s": round(wall, 3),
                "vcpu": round(total / wall, 4),
                "s_per_1000_requests": round(total / (requests / 1000), 4) if requests else None,
            }
        return result

    def http_interleaved(
        self, rate: float, *, duration: float, rounds: int, paths: tuple[str, ...] = (),
        port_of: Callable[[str], int] = lambda _path: HTTP_PORT,
    ) -> dict[str, Any]:  # fmt: skip
        """Every path at `rate` for `duration` seconds in all, taken as `rounds` turns of each
        path in a row, so a burst of outside load on this shared machine falls on all paths
        alike rather than on one; the turns are merged into one histogram per path and also
        kept one by one (`turns`) for the per-turn differences the verdicts use."""
        p = self.plan

        def one(path: str, seconds: float) -> dict[str, Any]:
            return workloads.http_raw(
                self.paths[path].target, loadgen=self.bins["loadgen"], port=port_of(path),
                rate=rate, duration=seconds, warmup=p.warmup, conns=p.conns,
            )  # fmt: skip

        log.info("http keep-alive @%d rps, %d turns of %.1f s", rate, rounds, duration / rounds)
        return self.interleaved(one, requests=rate * (p.warmup + duration / rounds),
                                seconds=duration / rounds, rounds=rounds, paths=paths)  # fmt: skip

    def interleaved(
        self, one: Callable[[str, float], dict[str, Any]], *, requests: float, seconds: float,
        rounds: int, paths: tuple[str, ...] = (),
    ) -> dict[str, Any]:  # fmt: skip
        """`rounds` turns of every path in `paths` (direct first) in a row (`one(path, seconds)`
        returns a raw run). A turn whose load generator lagged, or whose direct run caught a
        noise burst, is run again (up to `rounds` extra turns in all) and marked in `turns`."""
        paths = paths or self.only
        raws: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
        turns: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
        cpu: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
        failed: dict[str, str] = {}
        valid = extra = 0
        good: list[bool] = []  # per turn: no path's run of it was marked invalid
        while valid < rounds and extra <= rounds:
            bad = None
            for path in paths:
                if path in failed:
                    continue
                res = self._with_cpu(path, lambda path=path: one(path, seconds), requests=requests)
                if "failed" in res:
                    failed[path] = res["failed"]
                    continue
                if "proxy_cpu" in res:
                    cpu[path].append(res.pop("proxy_cpu"))
                raws[path].append(res)
                s = workloads.summarise(res)
                turn = {"p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
                        "lag_p99_ms": s["loadgen"]["lag_p99_ms"]}  # fmt: skip
                turns[path].append(turn)
                dmed = verdict.median_p99(turns["direct"])
                bad = bad or verdict.invalid_reason({**turn, "path": path}, direct_median_p99=dmed)
            good.append(not bad)
            if bad:
                extra += 1
                log.info("turn invalid (%s): %s", bad, "one more" if extra <= rounds else "no more")
            else:
                valid += 1
        out: dict[str, Any] = {}
        for path in paths:
            if path in failed:
                out[path] = {"failed": failed[path]}
                continue
            # The headline histogram merges the valid turns (all of them if none was valid);
            # every turn stays in `turns`, which the verdicts judge one by one.
            kept = [r for r, ok in zip(raws[path], good, strict=False) if ok] or raws[path]
            out[path] = workloads.summarise(workloads.merge_raw(kept))
            out[path]["turns"] = turns[path]
            if cpu[path]:
                out[path]["proxy_cpu"] = _merge_cpu(cpu[path], requests=requests * len(cpu[path]))
        return out

    def http(
        self, path: str, rate: float, *, duration: float, newconn: bool = False
    ) -> dict[str, Any]:
        p = self.plan
        requests = rate * (p.warmup + duration)
        return self._with_cpu(
            path,
            lambda: workloads.http(
                self.paths[path].target, loadgen=self.bins["loadgen"], port=HTTP_PORT,
                rate=rate, duration=duration, warmup=p.warmup, conns=p.conns, newconn=newconn,
            ),
            requests=requests,
        )  # fmt: skip

    def bulk(self, path: str) -> dict[str, Any]:
        return self._with_cpu(
            path,
            lambda: workloads.bulk(
                self.paths[path].target, port=IPERF_PORT, seconds=self.plan.bulk_seconds
            ),
            requests=0,
        )

    def loopback(self) -> dict[str, Any]:
        """The generator against the HTTP server in the server pod's own netns (127.0.0.1): the
        floor of what it can measure, and its own CPU, with no network or proxy in between."""
        server = self.lab.pod(NAMESPACES["direct"], "server")
        target = Target(self.lab.pod_netns(server), "127.0.0.1")
        return workloads.http(
            target, loadgen=self.bins["loadgen"], port=8080, rate=self.plan.loopback_rate,
            duration=self.plan.duration, warmup=self.plan.warmup, conns=self.plan.conns,
        )  # fmt: skip

    def _own_proxies(self) -> dict[str, PathSetup]:
        # nodemesh-l7 runs in the same agents as nodemesh: their memory is counted once.
        return {p: s for p, s in self.paths.items() if s.proxies and p != "nodemesh-l7"}

    def rss(self) -> dict[str, dict[str, int]]:
        return {
            path: {k: procstat.rss_bytes([pid]) for k, pid in setup.proxies.items()}
            for path, setup in self._own_proxies().items()
        }

    def peak_rss(self) -> procstat.PeakRss:
        return procstat.PeakRss(
            {f"{path}/{k}": [pid] for path, s in self._own_proxies().items()
             for k, pid in s.proxies.items()}
        )  # fmt: skip

    # --- the search -----------------------------------------------------------------------

    def _probe(self, path: str, rate: int, *, newconn: bool, limit_ms: float) -> dict[str, Any]:
        """One step of the search: direct and `path` in turns, the added p99 of each turn, and
        its median, so one burst of outside load cannot decide the step alone."""
        p = self.plan
        duration = p.search_turn_seconds(rate)
        turns: list[tuple[dict[str, Any], dict[str, Any]]] = []
        errors = 0
        failed = None
        # A step the machine's noise left undecided gets its rounds once more (all turns are
        # then judged together) before it stops the search.
        for _ in range(1 + SEARCH_RETRIES):
            for _ in range(p.search_rounds):
                base = self.http("direct", rate, duration=duration, newconn=newconn)
                res = self.http(path, rate, duration=duration, newconn=newconn)
                failed = failed or res.get("failed") or base.get("failed")
                errors += res.get("errors") or 0
                turns.append((base, res))
            step = judge_step(turns, limit_ms=limit_ms, errors=errors, failed=failed)
            if not step["undecided"]:
                break
        return {"rate": rate, **step, "turns": len(turns), "turn_s": duration}

    def search(self, path: str, *, newconn: bool = False) -> dict[str, Any]:
        """Highest rate whose added p99 (over direct at the same rate) stays under the limit
        with no errors: double until a rate fails, then bisect. `newconn`: a new connection
        per request (the rate is then new connections per second), with its own limit."""
        p = self.plan
        limit = p.newconn_added_p99_limit_ms if newconn else p.added_p99_limit_ms
        top = p.newconn_search_max if newconn else p.search_max
        steps: list[dict[str, Any]] = []
        best: int | None = None
        worst: int | None = None
        rate = p.newconn_search_start if newconn else p.search_start
        kind = "new connections" if newconn else "keep-alive"
        undecided: int | None = None
        for _ in range(p.search_steps):
            step = self._probe(path, rate, newconn=newconn, limit_ms=limit)
            steps.append(step)
            ok = step["ok"]
            log.info("search %s %s @%d/s: added p99 %s ms (median of %s), %s", kind, path, rate,
                     step["added_p99_ms"], step["rounds_added_p99_ms"],
                     "undecided" if step["undecided"] else "ok" if ok else "over")  # fmt: skip
            if step["undecided"]:
                # The machine, not the path, kept this step from being judged: going on
                # (as if it failed) would report the noise's rate as the path's.
                undecided = rate
                break
            if ok:
                best = rate
            else:
                worst = rate
            if worst is None:
                nxt = rate * 2
            elif best is None:
                nxt = max(rate // 2, p.search_lowest_rate)
            else:
                nxt = (best + worst) // 2
            if (
                nxt > top
                or nxt in (best, worst)
                or (best and worst and worst - best <= max(50, best // 10))
            ):
                break
            rate = nxt
        return {"max_rate": best, "bounded_by": worst, "undecided_at": undecided,
                "steps": steps, "limit_added_p99_ms": limit}  # fmt: skip


def judge_step(
    turns: list[tuple[dict[str, Any], dict[str, Any]]],
    *,
    limit_ms: float,
    errors: int = 0,
    failed: Any = None,
) -> dict[str, Any]:
    """A search step's verdict from its (direct, path) turns. A turn whose direct run's load
    generator lagged is noise: left out. A turn where only the path's lagged counts as over the
    limit: at these rates the path's own load starving the generator is what the search looks
    for. Fewer than two turns left: the step is undecided (neither ok nor over)."""
    added: list[float] = []
    overloaded = noisy = 0
    for base, res in turns:
        lag = {
            name: verdict.invalid_reason(
                {"lag_p99_ms": (s.get("loadgen") or {}).get("lag_p99_ms")},
                direct_median_p99=None,
            )
            for name, s in (("direct", base), ("path", res))
        }
        if lag["direct"]:
            noisy += 1
        elif lag["path"]:
            overloaded += 1
        elif (value := _added(res, base, "p99_ms")) is not None:
            added.append(value)
    judged = len(added) + overloaded
    undecided = judged < 2 and not errors and not failed
    ranked = sorted(added) + [float("inf")] * overloaded
    median = statistics.median(ranked) if judged >= 2 else None
    ok = not errors and not failed and median is not None and median < limit_ms
    return {
        "added_p99_ms": median if median is not None and median != float("inf") else None,
        "rounds_added_p99_ms": added, "overloaded_turns": overloaded, "noisy_turns": noisy,
        "undecided": undecided, "errors": errors, "failed": failed, "ok": ok,
    }  # fmt: skip


def _merge_cpu(parts: list[dict[str, Any]], *, requests: float) -> dict[str, Any]:
    seconds: dict[str, float] = {}
    for part in parts:
        for k, v in part["seconds"].items():
            seconds[k] = round(seconds.get(k, 0.0) + v, 3)
    total = sum(seconds.values())
    wall = sum(part["wall_s"] for part in parts)
    return {
        "seconds": seconds,
        "total_s": round(total, 3),
        "wall_s": round(wall, 3),
        "vcpu": round(total / wall, 4),
        "s_per_1000_requests": round(total / (requests / 1000), 4),
    }


def _added(res: dict[str, Any], base: dict[str, Any], key: str) -> float | None:
    if res.get(key) is None or base.get(key) is None:
        return None
    return round(res[key] - base[key], 4)


def run(lab: Lab, plan: RunPlan, *, workdir: Path) -> dict[str, Any]:
    """Everything except the machine description: the caller adds that and writes the files."""
    bins = native.build(workdir / "bin")
    bench = Bench(lab, plan, bins, Path(__file__).resolve().parent / "grpc_echo.py")
    log.info("deploying the paths: %s", ", ".join(PATHS))
    bench.deploy(workdir)
    out: dict[str, Any] = {"plan": plan.to_dict(), "paths": {p: {} for p in PATHS}}
    out["l7_route"] = {
        "endpoints": manifests.L7_REPLICAS, "request_timeout_s": manifests.ROUTE_TIMEOUT_S,
        "retry_attempts": manifests.ROUTE_RETRY_ATTEMPTS,
        "retry_codes": list(manifests.ROUTE_RETRY_CODES),
        "nodemesh": "HTTPRoute, retry budget: the default",
        "haproxy_http": "mode http, balance roundrobin, timeout server = the request timeout, "
                        "retries + retry-on the codes, option redispatch; no retry budget",
    }  # fmt: skip
    direct_target = bench.paths["direct"].target
    mesh_server = lab.pod(NAMESPACES["nodemesh"], "server")
    out["nodemesh_tunnel_tls"] = workloads.speaks_tls(
        Target(direct_target.netns, mesh_server["ip"]), port=4143
    )
    # One short run per path first: connections, caches and lazy imports are warm afterwards.
    for path in PATHS:
        bench.http(path, plan.rates[0], duration=min(plan.duration, 2.0))
    out["path_checks"] = {
        "haproxy_redirected_connections": checks.redirected_connections(
            bench.paths["haproxy"].target.netns, port=HTTP_PORT
        ),
        "nodemesh_agent_connections": checks.agent_connections(
            lab, namespace=NAMESPACES["nodemesh"]
        ),
        "haproxy_http_redirected_connections": checks.redirected_connections(
            bench.paths["haproxy-http"].target.netns, port=HTTP_PORT
        ),
        "nodemesh_l7_agent_connections": checks.agent_connections(
            lab, namespace=NAMESPACES["nodemesh-l7"]
        ),
    }
    time.sleep(1.0)
    idle_cpu0 = {k: procstat.cpu_seconds([v]) for k, v in bench.paths["nodemesh"].proxies.items()}
    t0 = time.monotonic()
    time.sleep(2.0)
    idle_wall = time.monotonic() - t0
    out["resources"] = {
        "rss_idle_bytes": bench.rss(),
        "agent_idle_vcpu": {
            k: round((procstat.cpu_seconds([v]) - idle_cpu0[k]) / idle_wall, 4)
            for k, v in bench.paths["nodemesh"].proxies.items()
        },
    }
    log.info("loadgen on loopback at %d rps", plan.loopback_rate)
    out["loadgen_loopback"] = bench.loopback()

    with bench.peak_rss() as peak:
        for rate in plan.rates:
            runs = bench.http_interleaved(rate, duration=plan.duration, rounds=plan.rounds)
            for path, summary in runs.items():
                out["paths"][path].setdefault("http", {})[str(rate)] = summary
        # The same requests at the top rate relayed as plain TCP: nodemesh to its opaque port,
        # HAProxy's TCP-mode pair (and direct) to the usual one, interleaved as above.
        top = max(plan.rates)
        log.info("opaque TCP @%d rps", top)
        mesh_ns = NAMESPACES["nodemesh"]
        counted = checks.requests_counted(lab, namespace=mesh_ns)
        opened = sum(checks.agent_connections(lab, namespace=mesh_ns).values())
        cells = bench.http_interleaved(
            top, duration=plan.duration, rounds=plan.rounds, paths=L4_PATHS,
            port_of=lambda path: OPAQUE_PORT if path == "nodemesh" else HTTP_PORT,
        )  # fmt: skip
        for path, cell in cells.items():
            out["paths"][path]["opaque"] = cell
        # Evidence that the opaque run went through the agents without being parsed.
        out["path_checks"]["nodemesh_opaque"] = {
            "connections_opened": sum(checks.agent_connections(lab, namespace=mesh_ns).values())
            - opened,
            "requests_counted": checks.requests_counted(lab, namespace=mesh_ns) - counted,
        }
    out["resources"]["rss_peak_under_load_bytes"] = dict(peak.peak)
    out["resources"]["rss_after_load_bytes"] = bench.rss()

    def grpc_turn(path: str, seconds: float) -> dict[str, Any]:
        return workloads.grpc_raw(
            bench.paths[path].target, script=bench.grpc_script, port=GRPC_PORT,
            rate=plan.grpc_rate, duration=seconds, warmup=plan.warmup,
        )  # fmt: skip

    def newconn_turn(path: str, seconds: float) -> dict[str, Any]:
        return workloads.http_raw(
            bench.paths[path].target, loadgen=bins["loadgen"], port=HTTP_PORT,
            rate=plan.newconn_rate, duration=seconds, warmup=plan.warmup, conns=plan.conns,
            newconn=True,
        )  # fmt: skip

    runs = (("grpc", grpc_turn, plan.grpc_rate, L4_PATHS),
            ("newconn", newconn_turn, plan.newconn_rate, PATHS))  # fmt: skip
    for kind, one, rate, kind_paths in runs:
        log.info("%s @%d rps, %d interleaved turns", kind, rate, plan.rounds)
        seconds = plan.other_duration / plan.rounds
        cells = bench.interleaved(one, requests=rate * (plan.warmup + seconds), seconds=seconds,
                                  rounds=plan.rounds, paths=kind_paths)  # fmt: skip
        for path, cell in cells.items():
            out["paths"][path][kind] = cell
    out["path_checks"]["nodemesh_l7_requests"] = checks.l7_requests(
        lab, namespace=NAMESPACES["nodemesh-l7"]
    )
    for path in L4_PATHS:
        log.info("bulk stream %s", path)
        out["paths"][path]["bulk"] = bench.bulk(path)

    for path in ("nodemesh", "haproxy"):
        out["paths"][path]["search"] = bench.search(path)
    for path in ("nodemesh", "haproxy"):
        out["paths"][path]["newconn_search"] = bench.search(path, newconn=True)

    log.info("agent memory with %d idle pods enrolled on %s", plan.idle_pods, CLIENT_NODE)
    idle_text = manifests.render(manifests.idle_objects(replicas=plan.idle_pods, node=CLIENT_NODE))
    lab.apply(idle_text, timeout=300)
    time.sleep(2.0)  # let the agents finish their enrolment work
    out["resources"]["rss_with_idle_pods_bytes"] = bench.rss()["nodemesh"]
    out["resources"]["rss_with_idle_pods_by_process_bytes"] = {
        k: procstat.rss_by_process([pid]) for k, pid in bench.paths["nodemesh"].proxies.items()
    }
    out["resources"]["idle_pods"] = {"count": plan.idle_pods, "node": CLIENT_NODE}
    lab.delete(idle_text, namespace=manifests.IDLE_NAMESPACE)
    out["resources"]["rss_after_idle_pods_left_bytes"] = bench.rss()["nodemesh"]
    return out


L7_ONLY = ("direct", "nodemesh-l7", "haproxy-http")


def run_l7(lab: Lab, plan: RunPlan, *, workdir: Path) -> dict[str, Any]:
    """`make bench` restricted to the L7 paths (and direct, which judges each turn's noise):
    the HTTP keep-alive rates and the new-connection run, as in `run`."""
    bins = native.build(workdir / "bin")
    bench = Bench(lab, plan, bins, Path(__file__).resolve().parent / "grpc_echo.py",
                  only=L7_ONLY)  # fmt: skip
    log.info("deploying the paths: %s", ", ".join(L7_ONLY))
    bench.deploy(workdir)
    out: dict[str, Any] = {"plan": plan.to_dict(), "paths": {p: {} for p in L7_ONLY}}
    for path in L7_ONLY:
        bench.http(path, plan.rates[0], duration=min(plan.duration, 2.0))
    for rate in plan.rates:
        runs = bench.http_interleaved(rate, duration=plan.duration, rounds=plan.rounds)
        for path, summary in runs.items():
            out["paths"][path].setdefault("http", {})[str(rate)] = summary

    def newconn_turn(path: str, seconds: float) -> dict[str, Any]:
        return workloads.http_raw(
            bench.paths[path].target, loadgen=bins["loadgen"], port=HTTP_PORT,
            rate=plan.newconn_rate, duration=seconds, warmup=plan.warmup, conns=plan.conns,
            newconn=True,
        )  # fmt: skip

    log.info("newconn @%d rps, %d interleaved turns", plan.newconn_rate, plan.rounds)
    seconds = plan.other_duration / plan.rounds
    cells = bench.interleaved(newconn_turn, requests=plan.newconn_rate * (plan.warmup + seconds),
                              seconds=seconds, rounds=plan.rounds)  # fmt: skip
    for path, cell in cells.items():
        out["paths"][path]["newconn"] = cell
    out["path_checks"] = {
        "nodemesh_l7_requests": checks.l7_requests(lab, namespace=NAMESPACES["nodemesh-l7"])
    }
    return out
