"""Which control plane the CLI talks to: an address given, a lab on this machine (found by
itself, or `--lab`), or a cluster from kubeconfig through a port-forward to the control plane.

The choice, first match wins: the flags (`--api-addr`; `--kubeconfig` or `--context`; `--lab`;
two of them at once is an error), then nodemesh's own environment (NODEMESH_API_ADDR,
NODEMESH_LAB), then $KUBECONFIG (a cluster, even with labs running here), then the one lab
running here, then ~/.kube/config."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click

from nodemesh import ports
from nodemesh.lab.client import LabClient, LabRequestFailed, LabUnavailable
from nodemesh.lab.paths import RUN_ROOT, LabNameError, LabPaths, check_name

CONTROLPLANE_SERVICE = "nodemesh-controlplane"


class TargetError(click.ClickException):
    """No control plane to talk to; the message says how to get one."""


@dataclass(frozen=True)
class TargetOptions:
    lab: str | None = None  # --lab, else $NODEMESH_LAB
    api_addr: str | None = None  # --api-addr, else $NODEMESH_API_ADDR
    context: str | None = None
    kubeconfig: str | None = None
    nodemesh_namespace: str = "nodemesh"
    lab_flag: bool = False  # `lab` came from --lab, not the environment
    api_addr_flag: bool = False


Mode = Literal["address", "lab", "cluster"]


def select(options: TargetOptions, *, labs: Callable[[], list[str]] | None = None) -> Mode:
    """Address, lab or cluster, by the precedence in this module's docstring. A lab selection
    may still leave the lab open (several running): `resolve` says so."""
    flags = [
        name
        for name, given in (
            ("--api-addr", options.api_addr_flag),
            ("--kubeconfig/--context", bool(options.kubeconfig or options.context)),
            ("--lab", options.lab_flag),
        )
        if given
    ]
    if len(flags) > 1:
        raise TargetError(f"{' and '.join(flags)} name different targets: give one of them")
    if options.api_addr_flag:
        return "address"
    if options.kubeconfig or options.context:
        return "cluster"
    if options.lab_flag:
        return "lab"
    if options.api_addr:
        return "address"
    if options.lab:
        return "lab"
    if os.environ.get("KUBECONFIG"):
        return "cluster"
    if (labs or running_labs)():
        return "lab"
    return "cluster"


@dataclass
class Endpoint:
    """Where the public API answers, and what it belongs to (for messages and `check`)."""

    address: str
    where: str  # "lab 'x'", "cluster (context y)", "127.0.0.1:8085"
    lab: LabPaths | None = None
    kube: Any = None  # kubernetes.client.ApiClient on a cluster
    # The caller's bearer token for the public API: $NODEMESH_API_TOKEN, else the lab admin's
    # (root-only file) or the kubeconfig user's token (static or from an exec plugin).
    token: str | None = None


TOKEN_ENV = "NODEMESH_API_TOKEN"


def _with_token(endpoint: Endpoint) -> Endpoint:
    given = os.environ.get(TOKEN_ENV, "").strip()
    if given:
        endpoint.token = given
    elif endpoint.lab is not None:
        endpoint.token = lab_admin_token(endpoint.lab)
    elif endpoint.kube is not None:
        endpoint.token = kubeconfig_token(endpoint.kube)
    return endpoint


def lab_admin_token(paths: LabPaths) -> str | None:
    from nodemesh.lab.access import ADMIN_TOKEN_FILE

    try:
        return (paths.access / ADMIN_TOKEN_FILE).read_text().strip() or None
    except PermissionError:
        raise TargetError(
            f"the admin token of lab {paths.name!r} belongs to root: run this command with sudo"
        ) from None
    except OSError:
        return None  # a lab made before tokens existed: the API will say what it misses


def kubeconfig_token(api: Any) -> str | None:
    """The kubeconfig user's bearer token; None for client-certificate users (then set
    NODEMESH_API_TOKEN, e.g. to `kubectl create token <serviceaccount>`)."""
    cfg = api.configuration
    if getattr(cfg, "refresh_api_key_hook", None) is not None:
        cfg.refresh_api_key_hook(cfg)  # exec plugins: a fresh token
    keys = cfg.api_key or {}
    value = keys.get("BearerToken") or keys.get("authorization") or ""  # by client version
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --lab, --api-addr, --context, --kubeconfig, --nodemesh-namespace as `target`."""

    @click.option(
        "--lab",
        "t_lab",
        metavar="NAME",
        help="Lab to talk to (default: the one running here; env NODEMESH_LAB).",
    )
    @click.option(
        "--api-addr",
        "t_api_addr",
        metavar="HOST:PORT",
        help="The public API's address, e.g. 127.0.0.1:8085 (env NODEMESH_API_ADDR).",
    )
    @click.option("--context", "t_context", help="kubeconfig context of a cluster.")
    @click.option(
        "--kubeconfig",
        "t_kubeconfig",
        type=click.Path(dir_okay=False),
        help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config).",
    )
    @click.option(
        "--nodemesh-namespace",
        "t_ns",
        default="nodemesh",
        show_default=True,
        help="Namespace nodemesh is installed in (clusters).",
    )
    @functools.wraps(f)
    def wrapper(
        *args: Any,
        t_lab: str | None,
        t_api_addr: str | None,
        t_context: str | None,
        t_kubeconfig: str | None,
        t_ns: str,
        **kwargs: Any,
    ) -> Any:
        target = TargetOptions(
            lab=t_lab or os.environ.get("NODEMESH_LAB") or None,
            api_addr=t_api_addr or os.environ.get("NODEMESH_API_ADDR") or None,
            context=t_context,
            kubeconfig=t_kubeconfig,
            nodemesh_namespace=t_ns,
            lab_flag=bool(t_lab),
            api_addr_flag=bool(t_api_addr),
        )
        return f(*args, target=target, **kwargs)

    return wrapper


def running_labs() -> list[str]:
    try:
        return sorted(p.name for p in RUN_ROOT.iterdir() if (p / "lab.json").exists())
    except OSError:  # no /run/nodemesh, or not ours to read (labs are root's)
        return []


def _lab_paths(name: str) -> LabPaths:
    try:
        paths = LabPaths(check_name(name))
    except LabNameError as e:
        raise TargetError(str(e)) from None
    try:
        present = paths.config.exists()
    except PermissionError:
        raise TargetError(f"lab {name!r} belongs to root: run this command as root") from None
    if not present:
        others = running_labs()
        hint = f"labs here: {', '.join(others)}" if others else "start one as root: nodemesh lab up"
        raise TargetError(f"no lab named {name!r} ({hint})")
    return paths


def lab_status(paths: LabPaths, *, timeout: float = 10.0) -> dict[str, Any]:
    try:
        status: dict[str, Any] = LabClient(paths, timeout=timeout).call({"op": "status"})["status"]
    except (LabUnavailable, LabRequestFailed) as e:
        raise TargetError(f"{e} (is it up? nodemesh lab status --lab {paths.name})") from None
    return status


def lab_api_address(paths: LabPaths) -> str:
    """The local end of the lab's forward to the control plane's public API."""
    for f in lab_status(paths)["forwards"]:
        if (f["namespace"], f["service"], f["port"]) == (
            "nodemesh",
            CONTROLPLANE_SERVICE,
            ports.PUBLIC_API,
        ):
            return f"{f['host']}:{f['local_port']}"
    raise TargetError(
        f"lab {paths.name!r} runs without the mesh (it was started with --no-mesh): "
        f"recreate it with: nodemesh lab down --lab {paths.name} && nodemesh lab up"
    )


def _kubeconfig_present(options: TargetOptions) -> bool:
    if options.kubeconfig or options.context:
        return True
    files = os.environ.get("KUBECONFIG", "").split(os.pathsep)
    return (
        any(Path(f).is_file() for f in files if f) or Path("~/.kube/config").expanduser().exists()
    )


@contextlib.contextmanager
def resolve(options: TargetOptions) -> Iterator[Endpoint]:
    """The endpoint to use, open for the duration of the block (a port-forward on clusters)."""
    mode = select(options)
    if mode == "address":
        assert options.api_addr
        host, sep, port = options.api_addr.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(
                f"{options.api_addr!r} is not HOST:PORT", param_hint="'--api-addr'"
            )
        yield _with_token(Endpoint(options.api_addr, options.api_addr))
        return
    if mode == "lab":
        paths = _lab_paths(chosen_lab(options))
        yield _with_token(Endpoint(lab_api_address(paths), f"lab {paths.name!r}", lab=paths))
        return
    named = [f for f in os.environ.get("KUBECONFIG", "").split(os.pathsep) if f]
    if named and not (options.kubeconfig or any(Path(f).is_file() for f in named)):
        raise TargetError(
            f"$KUBECONFIG names no file that exists ({os.environ['KUBECONFIG']}): fix it, or "
            "choose a lab with --lab"
        )
    if not _kubeconfig_present(options):
        where = "" if os.geteuid() == 0 else " (labs are root's: try as root)"
        raise TargetError(
            f"no running lab here{where} and no kubeconfig: start a lab (as root) with "
            "`nodemesh lab up`, or pass --context, --kubeconfig or --api-addr"
        )
    from nodemesh.cli.cluster import cluster_endpoint  # the kubernetes client loads slowly

    with cluster_endpoint(options) as endpoint:
        yield _with_token(endpoint)


def kube_or_lab(options: TargetOptions) -> Mode:
    """For commands that need the cluster's or the lab's own API (not the public API's address):
    the selection with --api-addr and NODEMESH_API_ADDR left out."""
    return select(dataclasses.replace(options, api_addr=None, api_addr_flag=False))


def chosen_lab(options: TargetOptions) -> str:
    """The lab named, or the only one running here."""
    if options.lab:
        return options.lab
    labs = running_labs()
    if len(labs) > 1:
        raise TargetError(f"several labs are running ({', '.join(labs)}): choose with --lab")
    if not labs:
        raise TargetError("no lab is running here: start one (as root) with `nodemesh lab up`")
    return labs[0]
