"""`nodemesh lab ...`: the local multi-node lab (up, down, status, apply, delete, exec, logs,
rollout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
import yaml

from nodemesh import ports
from nodemesh.cli.install import agent as agent_install
from nodemesh.cli.install import ingress as ingress_install
from nodemesh.cli.lab_mesh import LAB_VALUES, mesh_manifest
from nodemesh.identity import create_issuer_files
from nodemesh.lab.access import create_lab_access
from nodemesh.lab.client import LabClient, LabRequestFailed, LabUnavailable
from nodemesh.lab.config import Forward, ForwardError, LabConfig
from nodemesh.lab.container import INIT
from nodemesh.lab.ledger import Ledger
from nodemesh.lab.manifests import ManifestError, parse
from nodemesh.lab.paths import LabNameError, LabPaths, check_name, existing_labs
from nodemesh.lab.procs import children
from nodemesh.lab.teardown import down as teardown

REPO = Path(__file__).resolve().parents[2]
DEMO_MANIFEST = REPO / "manifests" / "examples" / "emojivoto.yml"
# Short, so a test sees a fixed run in Prometheus within seconds.
LAB_SCRAPE_INTERVAL = "1s"
NEEDED = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "iptables-legacy-restore": "iptables",
    "/usr/lib/cni/bridge": "containernetworking-plugins",
    "/usr/lib/cni/host-local": "containernetworking-plugins",
    "/usr/lib/cni/loopback": "containernetworking-plugins",
}


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def need_root() -> None:
    if os.geteuid() != 0:
        fail(
            "nodemesh lab must run as root: it creates network namespaces, links and iptables "
            "rules. Run it again as root."
        )


def lab_paths(name: str) -> LabPaths:
    try:
        return LabPaths(check_name(name))
    except LabNameError as e:
        fail(str(e))


def running_lab(name: str) -> LabPaths:
    paths = lab_paths(name)
    if not paths.config.exists():
        others = existing_labs()
        hint = f" (labs here: {', '.join(others)})" if others else " (start one: nodemesh lab up)"
        fail(f"no lab named {name!r}{hint}")
    return paths


# --lab as every other command spells it; --name is the older spelling, still accepted.
name_option = click.option(
    "--lab", "--name", "name", metavar="NAME",
    default=lambda: os.environ.get("NODEMESH_LAB", "lab"), show_default="lab",
    help="Lab name (env NODEMESH_LAB; --name is the same).",
)  # fmt: skip


@click.group()
def lab() -> None:
    """A local multi-node cluster made of network namespaces (root only)."""


@lab.command()
@name_option
@click.option("--nodes", type=click.IntRange(1, 9), default=2, show_default=True)
@click.option("--mesh/--no-mesh", default=True, show_default=True,
              help="Run the mesh's control plane (and node agents) in the lab.")  # fmt: skip
@click.option("--demo", is_flag=True, help="Deploy the emojivoto example and wait for it.")
@click.option(
    "--forward", "forwards", multiple=True, metavar="[HOST:]PORT:NS/SVC:PORT",
    help="Forward a local port to a Service port (repeatable).",
)  # fmt: skip
@click.option(
    "--demo-port", type=click.IntRange(0, 65535), default=8080, show_default=True,
    help="Local port for the demo's web (0: any free port).",
)  # fmt: skip
@click.option(
    "--api-port", type=click.IntRange(0, 65535), default=ports.PUBLIC_API, show_default=True,
    help="Local port for the control plane's public API (0: any free port).",
)  # fmt: skip
@click.option(
    "--dashboard-port", type=click.IntRange(0, 65535), default=ports.DASHBOARD, show_default=True,
    help="Local port for the dashboard (0: any free port).",
)  # fmt: skip
@click.option(
    "--prometheus", is_flag=True,
    help="Also run Debian's prometheus as a pod scraping the node agents, and answer stat and "
    "edges from it (the control plane's --prometheus-url).",
)  # fmt: skip
@click.option(
    "--prometheus-port", type=click.IntRange(0, 65535), default=9090, show_default=True,
    help="Local port for Prometheus with --prometheus (0: any free port).",
)  # fmt: skip
@click.option(
    "--ingress", is_flag=True,
    help="Also run nodemesh-ingress (as `nodemesh install --ingress` renders it), serving the "
    "lab's Ingresses of class nodemesh.",
)  # fmt: skip
@click.option(
    "--ingress-http-port", type=click.IntRange(0, 65535), default=8088, show_default=True,
    help="Local port for nodemesh-ingress' HTTP listener with --ingress (0: any free port).",
)  # fmt: skip
@click.option(
    "--ingress-https-port", type=click.IntRange(0, 65535), default=8443, show_default=True,
    help="Local port for its HTTPS listener with --ingress (0: any free port).",
)  # fmt: skip
@click.option("--timeout", type=click.IntRange(10, 3600), default=240, show_default=True)
@click.option("--keep-on-failure", is_flag=True, help="Leave a lab that did not come up, to debug.")
@click.option(
    "--agent-arg", "agent_args", multiple=True, metavar="ARG",
    help="An extra argument for every node agent, e.g. --agent-arg=--gone-pod-grace-seconds=10 "
    "(repeatable; see nodemesh-agent --help).",
)  # fmt: skip
@click.option(
    "--ha", is_flag=True,
    help="Run 3 control-plane replicas, as `nodemesh install --ha` does; any of them answers "
    "stat and tap for the whole lab.",
)  # fmt: skip
def up(
    name: str,
    nodes: int,
    mesh: bool,
    demo: bool,
    forwards: tuple[str, ...],
    demo_port: int,
    api_port: int,
    dashboard_port: int,
    prometheus: bool,
    prometheus_port: int,
    ingress: bool,
    ingress_http_port: int,
    ingress_https_port: int,
    timeout: int,
    keep_on_failure: bool,
    agent_args: tuple[str, ...],
    ha: bool,
) -> None:
    """Create a lab: underlay, NODES node namespaces, and its supervisor."""
    need_root()
    if prometheus and not mesh:
        fail("--prometheus scrapes the node agents: it cannot go with --no-mesh")
    if ingress and not mesh:
        fail("--ingress is a meshed nodemesh-ingress: it cannot go with --no-mesh")
    if prometheus and not _have("/usr/bin/prometheus"):
        fail(
            "--prometheus: /usr/bin/prometheus missing (apt package prometheus); "
            "run scripts/bootstrap"
        )
    paths = lab_paths(name)
    if paths.root.exists():
        fail(
            f"lab {name!r} already exists ({paths.root}); "
            f"remove it with: nodemesh lab down --lab {name}"
        )
    missing = [f"{exe} (apt package {pkg})" for exe, pkg in NEEDED.items() if not _have(exe)]
    if missing:
        fail("missing on this machine: " + ", ".join(missing) + "; run scripts/bootstrap")
    try:
        fwd = [Forward.parse(f) for f in forwards]
    except ForwardError as e:
        fail(str(e))
    if demo and not any(f.service == "web-svc" for f in fwd):
        fwd.append(Forward("127.0.0.1", demo_port, "emojivoto", "web-svc", 80))
    if mesh:
        fwd.append(
            Forward("127.0.0.1", api_port, "nodemesh", "nodemesh-controlplane", ports.PUBLIC_API)
        )
        fwd.append(
            Forward("127.0.0.1", dashboard_port, "nodemesh", "nodemesh-dashboard", ports.DASHBOARD)
        )
    if prometheus:
        fwd.append(
            Forward(
                "127.0.0.1", prometheus_port, "nodemesh", "nodemesh-prometheus", ports.PROMETHEUS
            )
        )
    if ingress:
        ns = ingress_install.namespace_of(LAB_VALUES)
        for local, port in ((ingress_http_port, 80), (ingress_https_port, 443)):
            fwd.append(Forward("127.0.0.1", local, ns, ingress_install.NAME, port))
    started = time.monotonic()
    paths.root.mkdir(parents=True, mode=0o700)
    LabConfig(name=name, nodes=nodes, mesh=mesh, forwards=fwd).save(paths.config)
    try:
        if mesh:
            issued = create_issuer_files(
                paths.identity, nodes=[f"node{i}" for i in range(1, nodes + 1)]
            )
            _write_agent_credentials(paths, issued.tokens)
            create_lab_access(paths.access)
        if mesh:
            _warm_agent_bytecode()
        _start_supervisor(paths, timeout=timeout)
        if prometheus:
            _write_prometheus_config(paths, _call(paths, {"op": "status"})["status"]["nodes"])
        if mesh:
            manifest = mesh_manifest(
                paths,
                agent_args,
                controlplane_replicas=3 if ha else 1,
                prometheus=prometheus,
                ingress=ingress,
            )
            _apply_text(paths, manifest, source="nodemesh lab mesh")
            _wait_ready(paths, timeout=timeout - (time.monotonic() - started))
        if demo:
            _apply_file(paths, DEMO_MANIFEST)
            _wait_ready(paths, timeout=timeout - (time.monotonic() - started))
    except (click.ClickException, KeyboardInterrupt):
        if keep_on_failure:
            click.echo(f"lab {name!r} did not come up; kept for debugging", err=True)
        else:
            click.echo(f"lab {name!r} did not come up; removing what was made", err=True)
            teardown(paths)
        raise
    elapsed = time.monotonic() - started
    status = LabClient(paths).call({"op": "status"})["status"]
    what = "the mesh (control plane, node agents)" if mesh else "no mesh"
    click.echo(f"lab {name!r} is up with {nodes} node(s) and {what} in {elapsed:.1f} s")
    _print_status(status)
    click.echo("")
    for f in map(lambda d: Forward(**d), status["forwards"]):
        if f.service == "nodemesh-dashboard":
            click.echo(f"dashboard: http://{f.host}:{f.local_port}/")
        elif f.service == "nodemesh-controlplane":
            click.echo(f"public API: {f.host}:{f.local_port} (nodemesh stat deploy -n emojivoto)")
    if demo:
        web = next(Forward(**f) for f in status["forwards"] if f["service"] == "web-svc")
        click.echo(f"emojivoto: open http://{web.host}:{web.local_port}/ in a browser")
        click.echo(
            "  vote-bot ground truth: nodemesh lab exec deploy/vote-bot -n emojivoto "
            '-- python3 -c "import urllib.request as u;'
            "print(u.urlopen('http://127.0.0.1:8081/stats').read().decode())\""
        )
    click.echo(f"  status:   nodemesh lab status --lab {name}")
    click.echo(f"  remove:   nodemesh lab down --lab {name}")


def _write_agent_credentials(paths: LabPaths, tokens: dict[str, str]) -> None:
    """Each node's agent gets its own token and the trust anchor in a directory of its own (its
    DaemonSet mounts only that one, as a projected token and a ConfigMap would be on a cluster),
    never the issuer key or another node's token."""
    anchor = (paths.identity / "ca.crt").read_bytes()
    for node, token in tokens.items():
        d = paths.agent_credentials(node)
        d.mkdir(parents=True, mode=0o700)
        (d / "ca.crt").write_bytes(anchor)
        fd = os.open(d / "token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")


def _have(exe: str) -> bool:
    return Path(exe).exists() if exe.startswith("/") else shutil.which(exe) is not None


def _warm_agent_bytecode() -> None:
    """Write the bytecode the agent's container loads, as the image build does
    (images/agent.Dockerfile): the lab's "image" is this checkout and its venv, mounted
    read-only into a container with a read-only root, so the agent cannot write its .pyc files
    and, without them, compiles every module at each start (slower, and ~2 MB more RSS from the
    compiler's leftovers). The DaemonSet sets PYTHONOPTIMIZE (.opt-N.pyc files); importing what
    the keeper and the agent import at that level writes exactly those (~1 s once written)."""
    ds = agent_install.daemonset(LAB_VALUES)
    (agent,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"]
    env = {e["name"]: e["value"] for e in agent.get("env", []) if "value" in e}
    level = env.get("PYTHONOPTIMIZE", "")
    run_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",)}
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import nodeagent.handover.keeper, nodeagent.main, nodeagent.readycheck",
        ],
        env={**run_env, "PYTHONOPTIMIZE": level},
        stdout=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def _start_supervisor(paths: LabPaths, *, timeout: float) -> None:
    log = open(paths.supervisor_log, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodemesh.lab.supervisor", "--name", paths.name],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd="/",
    )  # fmt: skip
    log.close()
    Ledger(paths.ledger).process(proc.pid, role="supervisor")
    state_file = paths.root / "state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state_file.exists():
            state = json.loads(state_file.read_text())
            if state["state"] == "running":
                return
            if state["state"] == "failed":
                fail(f"lab supervisor failed: {state.get('error')}\n{_tail(paths.supervisor_log)}")
        if proc.poll() is not None:
            fail(f"lab supervisor exited ({proc.returncode}):\n{_tail(paths.supervisor_log)}")
        time.sleep(0.05)
    fail(f"lab supervisor did not start within {timeout} s:\n{_tail(paths.supervisor_log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _read_manifest(path: Path) -> tuple[str, list[dict[str, Any]]]:
    source = "<stdin>" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if source == "<stdin>" else path.read_text()
    except OSError as e:
        fail(f"{source}: cannot read: {e.strerror}")
    try:
        manifests = parse(text, source=source)
    except ManifestError as e:
        fail(str(e))
    return source, [{"obj": m.obj, "index": m.index} for m in manifests]


def _apply_file(paths: LabPaths, path: Path) -> list[str]:
    source, docs = _read_manifest(path)
    return _call(paths, {"op": "apply", "docs": docs, "source": source})["results"]


def _apply_text(paths: LabPaths, text: str, *, source: str) -> list[str]:
    try:
        docs = [{"obj": m.obj, "index": m.index} for m in parse(text, source=source)]
    except ManifestError as e:
        fail(str(e))
    return _call(paths, {"op": "apply", "docs": docs, "source": source})["results"]


def _write_prometheus_config(paths: LabPaths, nodes: list[dict[str, Any]]) -> None:
    """Prometheus' configuration and its file_sd targets: each node's agent (hostNetwork, so at
    the node's IP) on its admin port, labelled with the node as kubernetes_sd would."""
    d = paths.root / "prometheus"
    d.mkdir(mode=0o755, exist_ok=True)
    targets = [
        {"targets": [f"{n['ip']}:{ports.AGENT_ADMIN}"], "labels": {"node": n["name"]}}
        for n in sorted(nodes, key=lambda n: n["name"])
    ]
    (d / "agents.json").write_text(json.dumps(targets, indent=2) + "\n")
    config = {
        "global": {"scrape_interval": LAB_SCRAPE_INTERVAL, "evaluation_interval": "10s"},
        "scrape_configs": [
            {
                "job_name": "nodemesh-agent",
                "file_sd_configs": [{"files": [str(d / "agents.json")], "refresh_interval": "5s"}],
            }
        ],
    }
    (d / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))


def _call(paths: LabPaths, request: dict[str, Any]) -> dict[str, Any]:
    try:
        return LabClient(paths).call(request)
    except (LabUnavailable, LabRequestFailed) as e:
        fail(str(e))


def _wait_ready(paths: LabPaths, *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = _call(paths, {"op": "status"})["status"]
        pods = status["pods"]
        workloads_ready = all(w["ready"] >= w["desired"] for w in status["workloads"])
        if pods and workloads_ready and all(p["ready"] for p in pods):
            return status
        if time.monotonic() > deadline:
            waiting = ", ".join(
                f"{p['namespace']}/{p['name']} ({p['phase']} {p['message']})".replace(" )", ")")
                for p in pods
                if not p["ready"]
            )
            fail(f"pods not ready after {timeout:.0f} s: {waiting}")
        time.sleep(0.2)


@lab.command()
@name_option
def down(name: str) -> None:
    """Remove a lab: every namespace, link, rule, file and process it made."""
    need_root()
    paths = lab_paths(name)
    if not paths.root.exists():
        click.echo(f"no lab named {name!r}; nothing to remove")
        return
    removed = teardown(paths)
    for problem in removed.problems:
        click.echo(f"warning: {problem}", err=True)
    click.echo(
        f"lab {name!r} removed: {len(removed.netns)} network namespace(s), "
        f"{len(set(removed.processes))} process(es), {len(removed.paths)} path(s)"
    )


@lab.command()
@name_option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def status(name: str, output: str) -> None:
    """Show nodes, pods, services and port-forwards."""
    need_root()
    paths = running_lab(name)
    st = _call(paths, {"op": "status"})["status"]
    if output == "json":
        click.echo(json.dumps(st, indent=2))
    else:
        _print_status(st)


def _print_status(st: dict[str, Any]) -> None:
    click.echo("NODE      IP            POD CIDR")
    for n in st["nodes"]:
        click.echo(f"{n['name']:<9} {n['ip']:<13} {n['podCIDR']}")
    if st["pods"]:
        click.echo("")
        rows: list[tuple[str, ...]] = [("NAMESPACE", "POD", "NODE", "IP", "READY", "RESTARTS")]
        for p in sorted(st["pods"], key=lambda p: (p["namespace"], p["name"])):
            rows.append(
                (p["namespace"], p["name"], p["node"], p["ip"] or "-",
                 "yes" if p["ready"] else p["phase"].lower() or "no", str(p["restarts"]))
            )  # fmt: skip
        _table(rows)
    if st["services"]:
        click.echo("")
        rows = [("NAMESPACE", "SERVICE", "CLUSTER-IP", "PORTS")]
        for s in sorted(st["services"], key=lambda s: (s["namespace"], s["name"])):
            rows.append((s["namespace"], s["name"], s["clusterIP"], ",".join(map(str, s["ports"]))))
        _table(rows)
    for f in st["forwards"]:
        click.echo(f"forward: {Forward(**f)}")


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@lab.command()
@name_option
@click.option("-f", "--filename", type=click.Path(path_type=Path), required=True)
@click.option("--wait", is_flag=True, help="Wait until every pod of the lab is ready.")
@click.option("--timeout", type=click.IntRange(1, 3600), default=120, show_default=True)
def apply(name: str, filename: Path, wait: bool, timeout: int) -> None:
    """Create or update the objects in FILE (Namespace, Deployment, Service, Pod, ...)."""
    need_root()
    paths = running_lab(name)
    for line in _apply_file(paths, filename):
        click.echo(line)
    if wait:
        _wait_ready(paths, timeout=timeout)


@lab.command()
@name_option
@click.option("-f", "--filename", type=click.Path(path_type=Path), required=True)
@click.option(
    "--ignore-not-found",
    is_flag=True,
    help="As kubectl's: also skip kinds the lab does not keep (CustomResourceDefinition, ...), so "
    "`nodemesh uninstall | nodemesh lab delete --ignore-not-found -f -` works.",
)
def delete(name: str, filename: Path, ignore_not_found: bool) -> None:
    """Delete the objects in FILE."""
    need_root()
    paths = running_lab(name)
    if ignore_not_found:
        try:
            docs = [{"obj": m.obj, "index": m.index} for m in _known_kinds_only(filename)]
        except ManifestError as e:
            fail(str(e))
    else:
        _source, docs = _read_manifest(filename)
    refs = []
    for d in docs:
        obj = d["obj"]
        ns = (
            ""
            if obj["kind"] in ("Namespace", "Node")
            else obj["metadata"].get("namespace", "default")
        )
        refs.append({"kind": obj["kind"], "namespace": ns, "name": obj["metadata"]["name"]})
    for line in _call(paths, {"op": "delete", "refs": refs})["results"]:
        click.echo(line)


def _known_kinds_only(path: Path) -> list[Any]:
    """The objects of kinds the lab keeps; the others are reported as not found."""
    import yaml

    from nodemesh.lab.manifests import RUN_KINDS, STORED_KINDS

    source = "<stdin>" if str(path) == "-" else str(path)
    text = sys.stdin.read() if source == "<stdin>" else path.read_text()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError:
        return parse(text, source=source)  # reports where
    kept = []
    for d in docs:
        kind = d.get("kind") if isinstance(d, dict) else None
        if kind is not None and kind not in RUN_KINDS | STORED_KINDS:
            click.echo(f"{kind} {(d.get('metadata') or {}).get('name', '?')} not found")
        else:
            kept.append(d)
    return parse(yaml.safe_dump_all(kept), source=source) if kept else []


def _find_pod(paths: LabPaths, pod: str, namespace: str) -> dict[str, Any]:
    status = _call(paths, {"op": "status"})["status"]
    pods = [p for p in status["pods"] if p["namespace"] == namespace]
    if "/" in pod:
        kind, _, owner = pod.partition("/")
        if kind not in ("deploy", "deployment", "ds", "daemonset", "pod", "po"):
            fail(f"{pod!r}: use POD, deploy/NAME or pod/NAME")
        if kind in ("pod", "po"):
            pods = [p for p in pods if p["name"] == owner]
        else:
            pods = sorted(
                (p for p in pods if p["name"].startswith(owner + "-") and p["ready"]),
                key=lambda p: p["name"],
            )
    else:
        pods = [p for p in pods if p["name"] == pod]
    if not pods:
        fail(f"no ready pod {pod!r} in namespace {namespace!r} of lab {paths.name!r}")
    return pods[0]


@lab.command(name="exec", context_settings={"ignore_unknown_options": True})
@name_option
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-c", "--container", help="Container name (default: the first).")
@click.argument("pod")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def exec_(
    name: str, namespace: str, container: str | None, pod: str, command: tuple[str, ...]
) -> None:
    """Run COMMAND inside a container of POD (POD may be deploy/NAME), as `kubectl exec` does:
    in its network, mount and PID namespaces, as its user, with its capabilities."""
    need_root()
    paths = running_lab(name)
    p = _find_pod(paths, pod, namespace)
    init = _container_init_pid(paths, p, container)
    os.execv(sys.executable, [sys.executable, *INIT[1:], "enter", str(init), *command])


def _container_init_pid(paths: LabPaths, pod: dict[str, Any], container: str | None) -> int:
    """The host PID of a running container's entrypoint (PID 1 of its PID namespace)."""
    where = f"{pod['namespace']}/{pod['name']}"
    path = paths.objects / "Pod" / pod["namespace"] / f"{pod['name']}.yaml"
    try:
        obj = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(f"cannot read pod {where}: {e}")
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    chosen = [c for c in statuses if container in (None, c["name"])][:1]
    if not chosen:
        names = ", ".join(c["name"] for c in statuses)
        fail(f"pod {where} has no container {container!r} (it has: {names})")
    wrapper = str(chosen[0].get("containerID") or "").removeprefix("lab://")
    inits = children(int(wrapper)) if wrapper.isdigit() else []
    if not inits:
        fail(f"container {chosen[0]['name']} of pod {where} is not running")
    return inits[0]


@lab.command()
@name_option
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-c", "--container", help="Container name (default: the first).")
@click.option("-f", "--follow", is_flag=True)
@click.argument("pod")
def logs(name: str, namespace: str, container: str | None, follow: bool, pod: str) -> None:
    """Print a pod container's log (-f to follow)."""
    need_root()
    paths = running_lab(name)
    p = _find_pod(paths, pod, namespace)
    logdir = paths.logs(p["namespace"], p["name"])
    files = sorted(logdir.glob("*.log"))
    if container:
        files = [f for f in files if f.stem == container]
    if not files:
        fail(
            f"no log for {p['namespace']}/{p['name']}"
            + (f" container {container}" if container else "")
        )
    with open(files[0], "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            elif not follow:
                return
            else:
                time.sleep(0.2)


@lab.group()
def rollout() -> None:
    """Roll a DaemonSet as Kubernetes does (its updateStrategy: surge, unavailable, OnDelete)."""


def _daemonset_ref(resource: str) -> str:
    kind, sep, ds = resource.partition("/")
    if not sep or kind not in ("ds", "daemonset", "daemonsets") or not ds:
        fail(f"{resource!r}: the lab rolls DaemonSets: use ds/NAME")
    return ds


def _rollout_status(paths: LabPaths, namespace: str, ds: str) -> dict[str, Any]:
    request = {"op": "rollout", "action": "status", "kind": "DaemonSet"}
    return _call(paths, {**request, "namespace": namespace, "name": ds})["status"]


@rollout.command(name="restart")
@name_option
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--wait", is_flag=True, help="Wait until every node runs a new, ready pod.")
@click.option("--timeout", type=click.IntRange(1, 3600), default=180, show_default=True)
@click.argument("resource", metavar="ds/NAME")
def rollout_restart(name: str, namespace: str, wait: bool, timeout: int, resource: str) -> None:
    """Restart every pod of a DaemonSet by its update strategy (as kubectl rollout restart)."""
    need_root()
    paths = running_lab(name)
    ds = _daemonset_ref(resource)
    request = {"op": "rollout", "action": "restart", "kind": "DaemonSet"}
    click.echo(_call(paths, {**request, "namespace": namespace, "name": ds})["result"])
    if wait:
        _wait_rolled_out(paths, namespace, ds, timeout=timeout)


@rollout.command(name="status")
@name_option
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("--timeout", type=click.IntRange(1, 3600), default=180, show_default=True)
@click.argument("resource", metavar="ds/NAME")
def rollout_status(name: str, namespace: str, timeout: int, resource: str) -> None:
    """Wait until a DaemonSet's rollout is complete (as kubectl rollout status)."""
    need_root()
    paths = running_lab(name)
    _wait_rolled_out(paths, namespace, _daemonset_ref(resource), timeout=timeout)


def _wait_rolled_out(paths: LabPaths, namespace: str, ds: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        st = _rollout_status(paths, namespace, ds)
        if st["done"]:
            click.echo(f'daemon set "{ds}" successfully rolled out')
            return
        if time.monotonic() > deadline:
            fail(
                f"daemon set {namespace}/{ds} not rolled out after {timeout:.0f} s: "
                f"{st['updated']} of {st['desired']} updated, {st['ready']} ready, "
                f"{st['old']} old pod(s) left"
            )
        time.sleep(0.2)
