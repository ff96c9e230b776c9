"""`nodemesh check` against a lab: control plane, an agent per node, every meshed pod enrolled
with its rules and listeners, certificates, clock; and the machine's prerequisites (--pre)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from nodemesh import ports
from nodemesh.cli import checks
from nodemesh.cli.checks import Result, fail, ok, skip
from nodemesh.cli.publicapi import ApiError, PublicApi
from nodemesh.cli.target import Endpoint, TargetError, lab_api_address, lab_status
from nodemesh.lab.paths import LabPaths
from nodemesh.netns import NetnsError, socket_in_netns

LISTENER_PORTS = (ports.OUTBOUND, ports.INBOUND, ports.TUNNEL)
CHAINS = ("NODEMESH_PREROUTING", "NODEMESH_OUTPUT")
MAX_SKEW_S = 60.0


def agent_ready(
    netns: str, *, port: int = ports.AGENT_ADMIN, timeout: float = 3.0, path: str = "/ready"
) -> tuple[bool, str]:
    """GET `path` from the agent's admin port inside the node's netns (hostNetwork agent)."""
    try:
        s = socket_in_netns(netns)
    except NetnsError as e:
        return False, str(e)
    try:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    except OSError as e:
        return False, e.strerror or str(e)
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    return " 200 " in f"{status} ", body.decode("utf-8", "replace").strip() or status


_SERVER_FIRST = re.compile(
    r'^nodemesh_agent_server_first_destination\{ip="([^"]*)",port="(\d+)"\} (\S+)$', re.M
)


def server_first_check(group: str, node: str, netns: str) -> Result:
    """Which destinations the agent relays opaque because their server spoke first: every
    client's connections to them go without request metrics, so say so."""
    name = f"{node}: protocol detection"
    got, text = agent_ready(netns, path="/metrics")
    if not got:
        return skip(group, name, f"no /metrics: {text}")
    found = [f"{ip}:{port} ({float(left):.0f} s left)" for ip, port, left in
             _SERVER_FIRST.findall(text)]  # fmt: skip
    if not found:
        return ok(group, name, "no destination is relayed unobserved for speaking first")
    return ok(
        group,
        name,
        "relayed opaque, without request metrics, because their server spoke first: "
        + ", ".join(found),
    )


def _in_netns(netns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, timeout=10
    )


def _pod_object(paths: LabPaths, namespace: str, name: str) -> dict[str, Any]:
    try:
        return (
            yaml.safe_load((paths.objects / "Pod" / namespace / f"{name}.yaml").read_text()) or {}
        )
    except (OSError, yaml.YAMLError):
        return {}


def _enrolled(paths: LabPaths, node: str) -> dict[tuple[str, str], bool] | str:
    path = paths.run_dir(node) / "agent-state.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return f"cannot read {path}: {e}"
    return {(p["namespace"], p["name"]): bool(p.get("meshed")) for p in data.get("pods", [])}


def controlplane_checks(endpoint: Endpoint) -> tuple[list[Result], PublicApi | None]:
    g = "control plane"
    api = PublicApi(endpoint, timeout=5)
    try:
        v = api.version()
    except ApiError as e:
        api.close()
        return [
            fail(
                g,
                "public API answers",
                e.message,
                "look at the control plane's log: nodemesh lab logs "
                "deploy/nodemesh-controlplane -n nodemesh",
            )
        ], None
    out = [ok(g, "public API answers", f"version {v.version}, source {v.source}")]
    if v.synced:
        out.append(ok(g, "index synced with the cluster"))
    else:
        out.append(
            fail(
                g,
                "index synced with the cluster",
                "not synced: still listing, or a watch of the API server has been down for "
                "seconds (the control plane serves its last known state meanwhile)",
                f"its /ready on the admin port ({ports.CONTROLPLANE_ADMIN}) says which kinds; "
                "its log says why",
            )
        )
    return out, api


def agent_checks(paths: LabPaths, status: dict[str, Any], api: PublicApi | None) -> list[Result]:
    g = "node agents"
    connected: dict[str, bool] = {}
    if api is not None:
        try:
            connected = {n.name: n.agent_connected for n in api.nodes().nodes}
        except ApiError:
            pass
    out = []
    for node in (n["name"] for n in status["nodes"]):
        ready, why = agent_ready(paths.node_netns(node))
        if ready:
            out.append(ok(g, f"{node}: agent ready", why))
        else:
            out.append(
                fail(
                    g,
                    f"{node}: agent ready",
                    why or "no answer",
                    f"nodemesh lab logs -n nodemesh <nodemesh-agent pod on {node}>; "
                    "the DaemonSet restarts it (nodemesh lab status)",
                )
            )
            continue
        out.append(server_first_check(g, node, paths.node_netns(node)))
        if api is not None:
            if connected.get(node):
                out.append(ok(g, f"{node}: agent connected to the control plane"))
            else:
                out.append(
                    fail(
                        g,
                        f"{node}: agent connected to the control plane",
                        "no stream",
                        "check the agent's --controlplane, CA and token (its log says)",
                    )
                )
    return out


def pod_checks(paths: LabPaths, status: dict[str, Any], api: PublicApi | None) -> list[Result]:
    g = "meshed pods"
    if api is None:
        return [skip(g, "meshed pods", "the control plane did not answer")]
    meshed_ns = {ns for ns, on in api.workloads().namespaces_meshed.items() if on}
    state: dict[str, dict[tuple[str, str], bool] | str] = {}
    out: list[Result] = []
    for pod in sorted(status["pods"], key=lambda p: (p["namespace"], p["name"])):
        ns, name, node = pod["namespace"], pod["name"], pod["node"]
        if ns not in meshed_ns:
            continue
        obj = _pod_object(paths, ns, name)
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if (obj.get("spec") or {}).get("hostNetwork") or labels.get(
            "nodemesh.io/mesh"
        ) == "disabled":
            continue
        what = f"{ns}/{name}"
        records = state.setdefault(node, _enrolled(paths, node))
        if isinstance(records, str):
            out.append(fail(g, f"{what} enrolled", records, f"is the agent on {node} running?"))
            continue
        if not records.get((ns, name)):
            out.append(
                fail(
                    g,
                    f"{what} enrolled",
                    f"the agent on {node} has not enrolled it",
                    f"restart the pod, or see the agent's log on {node} and "
                    f"{paths.node_log_dir(node)}/nodemesh-cni.log",
                )
            )
            continue
        netns = paths.pod_netns(ns, name)
        saved = _in_netns(netns, "iptables-legacy-save", "-t", "nat").stdout
        missing = [c for c in CHAINS if f":{c} " not in saved]
        listening = _in_netns(netns, "ss", "-Hltn").stdout
        closed = [p for p in LISTENER_PORTS if f":{p} " not in listening]
        if missing or closed:
            detail = ", ".join(
                [f"chain {c} missing" for c in missing]
                + [f"nothing listens on {p}" for p in closed]
            )
            out.append(
                fail(
                    g,
                    f"{what} enrolled",
                    detail,
                    f"the agent on {node} re-checks pods on its sweep; restart the pod "
                    "if it stays so",
                )
            )
        else:
            out.append(ok(g, f"{what} enrolled", f"on {node}, rules and listeners in place"))
    if not out:
        out.append(
            skip(g, "meshed pods", "no pod in a namespace labelled nodemesh.io/mesh=enabled")
        )
    return out


def clock_checks(api: PublicApi | None) -> list[Result]:
    g = "clock"
    if api is None:
        return [skip(g, "clock skew", "the control plane did not answer")]
    try:
        reports = [n.last_report_unix_ms for n in api.nodes().nodes if n.last_report_unix_ms]
    except ApiError as e:
        return [skip(g, "clock skew", e.message)]
    if not reports:
        return [skip(g, "clock skew", "no agent has reported telemetry yet")]
    # The newest report is stamped by the control plane's clock a second or so ago at most.
    skew = abs(time.time() - max(reports) / 1000.0)
    if skew > MAX_SKEW_S:
        return [
            fail(
                g,
                "clock skew",
                f"{skew:.0f} s between this machine and the control plane",
                "synchronise the clocks (NTP) or restart the agents if they stopped reporting",
            )
        ]
    return [ok(g, "clock skew", f"under {MAX_SKEW_S:.0f} s ({skew:.1f} s)")]


def post_checks(endpoint: Endpoint) -> list[Result]:
    paths = endpoint.lab
    assert paths is not None
    status = lab_status(paths)
    results, api = controlplane_checks(endpoint)
    try:
        results += agent_checks(paths, status, api)
        results += pod_checks(paths, status, api)
        ident = paths.identity
        results += checks.certificate_checks(
            "identity",
            anchors_pem=checks.read(ident / "ca.crt") or b"",
            issuer_pem=checks.read(ident / "issuer.crt"),
            source=str(ident),
        )
        results += clock_checks(api)
    finally:
        if api is not None:
            api.close()
    return results


NEEDED = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "ss": "iproute2",
    "iptables-legacy-save": "iptables",
    "iptables-legacy-restore": "iptables",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "/usr/lib/cni/host-local": "containernetworking-plugins",
}


def redirect_target() -> tuple[bool, str]:
    """Is the nat REDIRECT target there (loaded, or loadable as xt_REDIRECT)?"""
    try:
        if "REDIRECT" in Path("/proc/net/ip_tables_targets").read_text().split():
            return True, "loaded"
    except OSError:
        pass
    release = os.uname().release
    mods = Path("/lib/modules") / release
    found = list(mods.glob("kernel/net/netfilter/xt_REDIRECT.ko*"))
    try:
        builtin = "xt_REDIRECT" in (mods / "modules.builtin").read_text()
    except OSError:
        builtin = False
    if found or builtin:
        return True, "available as module xt_REDIRECT"
    return False, f"no xt_REDIRECT for kernel {release}"


def pre_checks(lab: LabPaths | None) -> list[Result]:
    out: list[Result] = []
    g = "machine"
    if os.geteuid() == 0:
        out.append(ok(g, "running as root"))
    else:
        out.append(
            fail(
                g,
                "running as root",
                f"uid {os.geteuid()}",
                "the lab creates network namespaces and rules: run it as root",
            )
        )
    missing = [
        f"{e} ({p})"
        for e, p in NEEDED.items()
        if not (Path(e).exists() if e.startswith("/") else shutil.which(e))
    ]
    if missing:
        out.append(
            fail(
                g,
                "tools",
                "missing " + ", ".join(missing),
                "apt-get install the packages named, or run scripts/bootstrap",
            )
        )
    else:
        out.append(ok(g, "tools", "iproute2, iptables (legacy), CNI plugins"))
    has, why = redirect_target()
    if has:
        out.append(ok(g, "kernel: nat REDIRECT", why))
    else:
        out.append(fail(g, "kernel: nat REDIRECT", why, "install the kernel's modules package"))
    out.append(skip("kubernetes", "Kubernetes version", "the lab is nodemesh's own cluster"))
    if lab is not None:
        try:
            nodes = [n["name"] for n in lab_status(lab)["nodes"]]
        except TargetError as e:
            return out + [fail("CNI", "lab reachable", e.message, "nodemesh lab up")]
        for node in nodes:
            conf = lab.cni_conf_dir(node)
            lists = sorted(conf.glob("*.conflist")) if conf.is_dir() else []
            if lists:
                out.append(ok("CNI", f"{node}: CNI conf dir", f"{lists[0]}"))
            else:
                out.append(
                    fail(
                        "CNI",
                        f"{node}: CNI conf dir",
                        f"no conflist in {conf}",
                        "the primary CNI must be installed before nodemesh",
                    )
                )
    return out


def lab_api_reachable(paths: LabPaths) -> Endpoint:
    return Endpoint(lab_api_address(paths), f"lab {paths.name!r}", lab=paths)
