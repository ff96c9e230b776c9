"""`nodemesh migrate status | plan | apply STEP`: from an ingress or a router mesh to nodemesh,
one reversible step at a time (docs/adoption.md)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import click

from nodemesh.cli.target import TargetError, TargetOptions, chosen_lab, kube_or_lab, resolve
from nodemesh.cli.target import target_options as _target_options
from nodemesh.lab.paths import LabPaths
from nodemesh.migrate import backends, runner, survey, watch
from nodemesh.migrate import plan as planning


def _backend(target: TargetOptions) -> backends.Backend:
    if kube_or_lab(target) == "lab":
        paths = LabPaths(chosen_lab(target))
        if not paths.config.exists():
            raise TargetError(f"no lab named {paths.name!r}")
        return backends.LabBackend(paths)
    return backends.KubectlBackend(context=target.context, kubeconfig=target.kubeconfig)


def _survey(backend: backends.Backend) -> survey.Survey:
    try:
        return survey.survey(backend.objects())
    except (backends.BackendError, survey.SurveyError) as e:
        raise click.ClickException(str(e)) from None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@click.group()
def migrate() -> None:
    """Move a cluster from an ingress or a router mesh to nodemesh, one step at a time."""


def _status_rows(s: survey.Survey) -> list[dict[str, Any]]:
    return [
        {
            "namespace": ns.name,
            "stage": ns.stage,
            "meshed": ns.meshed,
            "inbound_mode": ns.inbound_mode if ns.meshed else None,
            "ingress_controllers": [str(w) for w in ns.ingress_controllers],
            "routers": ns.routers,
            "router_users": [str(w) for w in ns.router_users],
            "ingresses": ns.ingresses,
            "workloads": len(ns.workloads),
        }
        for ns in sorted(s.namespaces.values(), key=lambda n: n.name)
    ]


@migrate.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@_target_options
def status(output: str, target: TargetOptions) -> None:
    """Where each namespace stands: ingress controllers, routers and their users, meshing."""
    backend = _backend(target)
    s = _survey(backend)
    rows = _status_rows(s)
    uses = [
        {"workload": str(u.workload), "container": u.container, "env": u.env, "value": u.value,
         "router": u.router}
        for u in s.uses
    ]  # fmt: skip
    if output == "json":
        click.echo(json.dumps({"namespaces": rows, "router_uses": uses}, indent=2))
        return
    click.echo(f"{backend.where}:")
    header = ["NAMESPACE", "STAGE", "INBOUND", "INGRESS_CTRL", "ROUTERS", "ROUTER_USERS",
              "INGRESSES", "WORKLOADS"]  # fmt: skip
    table = [header] + [
        [r["namespace"], r["stage"].replace(" ", "_"), r["inbound_mode"] or "-",
         str(len(r["ingress_controllers"])), str(len(r["routers"])),
         str(len(r["router_users"])), str(r["ingresses"]), str(r["workloads"])]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for ref in s.ingress_controllers:
        click.echo(f"ingress controller: {ref}")
    for r in sorted(s.routers.values(), key=lambda r: r.name):
        served = ", ".join(str(w) for w in r.workloads) or "no workload found"
        click.echo(f"router {r.name}: served by {served}")
    for u in s.uses:
        click.echo(f"  used by {u.workload} ({u.container}): {u.env}={u.value}")


def _step_dict(step: planning.Step) -> dict[str, Any]:
    return {
        "id": step.id,
        "title": step.title,
        "state": step.state,
        "why": step.why,
        "changes": [c.summary for c in step.changes],
    }


@migrate.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@_target_options
def plan(output: str, target: TargetOptions) -> None:
    """The ordered, reversible steps from here to a meshed, strict, router-free cluster."""
    steps = planning.plan(_survey(_backend(target)), now=_now())
    if output == "json":
        click.echo(json.dumps({"steps": [_step_dict(s) for s in steps]}, indent=2))
        return
    for i, step in enumerate(steps, 1):
        click.echo(f"{i}. {step.id:<16} [{step.state}] {step.title}")
        for c in step.changes:
            click.echo(f"     - {c.summary}")
        if step.why:
            click.echo(f"     {step.why}")
        if step.state == planning.TODO:
            click.echo(f"     apply: nodemesh migrate apply {step.id}  (undone by itself if a "
                       "workload's success rate drops)")  # fmt: skip


@contextlib.contextmanager
def _sampler(target: TargetOptions) -> Iterator[runner.Sampler]:
    from nodemesh.api import public_pb2 as pb
    from nodemesh.cli.publicapi import PublicApi

    with resolve(target) as endpoint, PublicApi(endpoint) as api:

        def sample(window_s: int) -> list[watch.Sample]:
            response = api.stat(
                pb.StatRequest(
                    resource=pb.Resource(kind="deployment"),
                    all_namespaces=True,
                    window_seconds=window_s,
                )
            )
            return [
                watch.Sample(
                    f"{r.resource.namespace}/{r.resource.name}",
                    int(r.requests),
                    r.success_rate if r.HasField("success_rate") else None,
                )
                for r in response.rows
            ]

        yield sample


@migrate.command()
@click.argument("step", type=click.Choice(planning.STEP_IDS))
@click.option(
    "--watch",
    "watch_s",
    type=click.FloatRange(0, 3600),
    default=60.0,
    show_default=True,
    help="Seconds to watch success rates once rolled out.",
)
@click.option(
    "--rollout-timeout",
    type=click.FloatRange(1, 3600),
    default=300.0,
    show_default=True,
    help="Roll back when the step has not rolled out by then.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(0, 1),
    default=watch.DEFAULT_TOLERANCE,
    show_default=True,
    help="A success-rate drop smaller than this is not a drop.",
)
@click.option(
    "--min-requests",
    type=click.IntRange(1),
    default=watch.DEFAULT_MIN_REQUESTS,
    show_default=True,
    help="Judge only workloads with this many requests.",
)
@click.option("--force", is_flag=True, help="remove-router: even while apps still use it.")
@click.option("--keep-service", is_flag=True,
              help="remove-router: keep the router's Service, served by the node agents "
                   "(nodemesh.io/router=true), for meshed apps that still name it.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print the changes; apply nothing.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@_target_options
def apply(
    step: str,
    watch_s: float,
    rollout_timeout: float,
    tolerance: float,
    min_requests: int,
    force: bool,
    keep_service: bool,
    dry_run: bool,
    output: str,
    target: TargetOptions,
) -> None:
    """Apply STEP, watch success rates, and roll it back if a workload's drops.

    Exits 1 when the step was rolled back.
    """
    backend = _backend(target)
    steps = planning.plan(_survey(backend), now=_now(), force=force, keep_service=keep_service)
    try:
        chosen = planning.step_to_apply(steps, step)
    except planning.PlanError as e:
        raise click.ClickException(str(e)) from None
    if dry_run:
        for c in chosen.changes:
            click.echo(f"would: {c.summary}")
        return
    settings = runner.Settings(watch_s=watch_s, rollout_timeout_s=rollout_timeout,
                               tolerance=tolerance, min_requests=min_requests)  # fmt: skip
    echo = (lambda line: click.echo(line, err=True)) if output == "json" else click.echo
    with _sampler(target) as sample:
        try:
            outcome = runner.run(chosen, backend=backend, sample=sample, settings=settings,
                                 echo=echo)  # fmt: skip
        except backends.BackendError as e:
            raise click.ClickException(str(e)) from None
    if output == "json":
        body = asdict(outcome)
        click.echo(json.dumps(body, indent=2))
    if outcome.rolled_back:
        raise SystemExit(1)
