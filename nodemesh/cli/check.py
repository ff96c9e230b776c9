"""`nodemesh check [--pre]`: is nodemesh (or the machine, before install) in working order?"""

from __future__ import annotations

import sys

import click

from nodemesh.cli import check_lab
from nodemesh.cli.checks import Result, report
from nodemesh.cli.target import (
    TargetOptions,
    _lab_paths,
    kube_or_lab,
    resolve,
    running_labs,
    target_options,
)


@click.command()
@click.option("--pre", is_flag=True, help="Check prerequisites before installing.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@target_options
def check(pre: bool, output: str, target: TargetOptions) -> None:
    """Check the control plane, the agents, the meshed pods, certificates and clocks."""
    results: list[Result]
    on_cluster = pre and kube_or_lab(target) == "cluster"
    if pre and not on_cluster:
        labs = [target.lab] if target.lab else running_labs()
        lab = _lab_paths(labs[0]) if len(labs) == 1 else None
        results = check_lab.pre_checks(lab)
    elif pre:
        from nodemesh.cli.check_cluster import pre_checks
        from nodemesh.cli.cluster import api_client

        api = api_client(target)
        try:
            results = pre_checks(api, namespace=target.nodemesh_namespace)
        finally:
            api.close()
    else:
        with resolve(target) as endpoint:
            if endpoint.lab is not None:
                results = check_lab.post_checks(endpoint)
            elif endpoint.kube is not None:
                from nodemesh.cli.check_cluster import post_checks

                results = post_checks(endpoint, namespace=target.nodemesh_namespace)
            else:
                results, public = check_lab.controlplane_checks(endpoint)
                if public is not None:
                    public.close()
    if not report(results, output=output):
        sys.exit(1)
