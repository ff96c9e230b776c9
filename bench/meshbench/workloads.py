"""Run one workload inside a pod's netns and summarise it: HTTP/1.1 (keep-alive or a connection
per request, the C load generator), gRPC unary (grpc_echo.py), one bulk stream (iperf3)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodemesh.histogram import quantile

ERROR_KINDS = ("status_errors", "conn_errors", "timeouts", "dropped")
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}


class WorkloadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Target:
    """Where a path's client runs and what it connects to."""

    netns: str
    addr: str


def _in_netns(netns: str, argv: list[str], *, timeout: float) -> str:
    res = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout
    )
    if res.returncode != 0:
        raise WorkloadError(f"{argv[0]} in {netns} exited {res.returncode}: {res.stderr[-2000:]}")
    return res.stdout


def _parse(out: str, what: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as e:
        raise WorkloadError(f"{what}: no JSON result in {out[-500:]!r}") from e
    if "fatal" in data:
        raise WorkloadError(f"{what}: {data['fatal']}")
    return data


def _ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 4)


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Percentiles (ms, from the histogram), counts, and the generator's own lag and CPU."""
    lat = raw["latency"]
    counts = dict(zip(lat["buckets"], lat["counts"], strict=True))
    lag = raw["lag"]
    lag_counts = dict(zip(lag["buckets"], lag["counts"], strict=True))
    errors = sum(raw[k] for k in ERROR_KINDS)
    out: dict[str, Any] = {
        "rate": raw["rate"],
        "duration_s": raw["duration_s"],
        "scheduled": raw["scheduled"],
        "completed": raw["completed"],
        "errors": errors,
        "error_detail": {k: raw[k] for k in ERROR_KINDS},
        "achieved_rps": round(raw["completed"] / raw["duration_s"], 1),
    }
    for name, q in QUANTILES.items():
        value = quantile(counts, q)
        # A bucket's midpoint may lie above the largest sample in it; the exact max bounds it.
        out[f"{name}_ms"] = _ms(None if value is None else min(value, lat["max_us"]))
    out["max_ms"] = _ms(lat["max_us"])
    out["mean_ms"] = _ms(lat["sum_us"] / lat["total"]) if lat["total"] else None
    out["loadgen"] = {
        "lag_p50_ms": _ms(quantile(lag_counts, 0.5)),
        "lag_p99_ms": _ms(quantile(lag_counts, 0.99)),
        "lag_max_ms": _ms(lag["max_us"]),
        "cpu_s": round(raw["cpu_s"], 4),
    }
    out["rounds"] = raw.get("rounds", 1)
    out["histogram_us"] = {"buckets": lat["buckets"], "counts": lat["counts"]}
    return out


def merge_raw(raws: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs at one rate as one: counts and histograms added, durations summed."""
    out = dict(raws[0])
    for key in ("scheduled", "completed", "cpu_s", "duration_s", *ERROR_KINDS):
        out[key] = sum(r[key] for r in raws)
    for hist in ("latency", "lag"):
        counts: dict[int, int] = {}
        for r in raws:
            for b, n in zip(r[hist]["buckets"], r[hist]["counts"], strict=True):
                counts[b] = counts.get(b, 0) + n
        out[hist] = {
            "buckets": sorted(counts),
            "counts": [counts[b] for b in sorted(counts)],
            "total": sum(r[hist]["total"] for r in raws),
            "sum_us": sum(r[hist]["sum_us"] for r in raws),
            "max_us": max(r[hist]["max_us"] for r in raws),
        }
    out["rounds"] = len(raws)
    return out


def http_raw(
    target: Target, *, loadgen: Path, port: int, rate: float, duration: float, warmup: float,
    conns: int = 32, newconn: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One load generator run, unsummarised (for merge_raw)."""
    argv = [str(loadgen), "--addr", target.addr, "--port", str(port), "--rate", str(rate),
            "--duration", str(duration), "--warmup", str(warmup),
            "--conns", str(conns)]  # fmt: skip
    if newconn:
        argv.append("--newconn")
    out = _in_netns(target.netns, argv, timeout=warmup + duration + 60)
    return _parse(out, "loadgen")


def http(target: Target, **kwargs: Any) -> dict[str, Any]:
    return summarise(http_raw(target, **kwargs))


def grpc_raw(
    target: Target, *, script: Path, port: int, rate: float, duration: float, warmup: float
) -> dict[str, Any]:
    argv = [sys.executable, str(script), "load", "--addr", target.addr, "--port", str(port),
            "--rate", str(rate), "--duration", str(duration), "--warmup", str(warmup)]  # fmt: skip
    out = _in_netns(target.netns, argv, timeout=warmup + duration + 60)
    return _parse(out, "grpc client")


def grpc_unary(target: Target, **kwargs: Any) -> dict[str, Any]:
    return summarise(grpc_raw(target, **kwargs))


def bulk(target: Target, *, port: int, seconds: float) -> dict[str, Any]:
    """One TCP stream for `seconds` (iperf3), in bits/s as the receiver counted them."""
    argv = ["iperf3", "--client", target.addr, "--port", str(port), "--time", str(seconds),
            "--json", "--omit", "1"]  # fmt: skip
    for attempt in range(3):
        try:
            out = _in_netns(target.netns, argv, timeout=seconds + 60)
            break
        except WorkloadError as e:
            # iperf3 serves one test at a time; a probe or the previous test may still hold it.
            if "busy" not in str(e) or attempt == 2:
                raise
            time.sleep(1.0)
    try:
        data = json.loads(out)
        received = data["end"]["sum_received"]
    except (json.JSONDecodeError, KeyError) as e:
        raise WorkloadError(f"iperf3: unexpected output {out[-500:]!r}") from e
    return {
        "seconds": round(received["seconds"], 3),
        "bytes": received["bytes"],
        "gbit_s": round(received["bits_per_second"] / 1e9, 3),
        "retransmits": data["end"].get("sum_sent", {}).get("retransmits"),
    }


_TLS_PROBE = """
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
try:
    t = ctx.wrap_socket(s)
    print("tls")
except ssl.SSLEOFError:
    print("plain")
except ssl.SSLError as e:
    print("tls" if "ALERT" in str(e).upper() else "plain")
except OSError:
    print("plain")
"""


def speaks_tls(target: Target, *, port: int) -> bool:
    """Whether something answering at target.addr:port completes or refuses a TLS handshake
    the way a TLS server would (an alert), rather than dropping the connection."""
    out = _in_netns(target.netns, [sys.executable, "-c", _TLS_PROBE, target.addr, str(port)],
                    timeout=20)  # fmt: skip
    return out.strip() == "tls"
