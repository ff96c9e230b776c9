"""`nodemesh install | kubectl apply -f -` and
`nodemesh uninstall | kubectl delete --ignore-not-found -f -`."""

from __future__ import annotations

import datetime
from pathlib import Path

import click

from nodemesh.cli.install import identity, render
from nodemesh.cli.install.controlplane import GATEWAY_API_NOTE
from nodemesh.cli.install.meta import Obj
from nodemesh.cli.install.values import (
    HA_CONTROLLER_REPLICAS,
    HA_WEB_REPLICAS,
    PULL_POLICIES,
    BadValue,
    InstallValues,
    checked,
)
from nodemesh.version import __version__

_defaults = InstallValues()
_path = click.Path(path_type=Path, dir_okay=False)


@click.command()
@click.option(
    "-n",
    "--nodemesh-namespace",
    "namespace",
    default=_defaults.namespace,
    show_default=True,
    help="Namespace of the control plane and the agents.",
)
@click.option(
    "--ha",
    is_flag=True,
    help=f"High availability: {HA_CONTROLLER_REPLICAS} control plane and "
    f"{HA_WEB_REPLICAS} dashboard replicas spread over nodes.",
)
@click.option("--controller-replicas", type=int, help="Control plane replicas [1; --ha: 3].")
@click.option("--web-replicas", type=int, help="Dashboard replicas [1; --ha: 2].")
@click.option("--prometheus", is_flag=True, help="Also install a Prometheus scraping nodemesh.")
@click.option("--prometheus-replicas", type=int, default=1, show_default=True)
@click.option(
    "--ingress",
    is_flag=True,
    help="Also install nodemesh-ingress, serving Ingresses of class nodemesh (namespace "
    "NAMESPACE-ingress, meshed; a LoadBalancer Service on ports 80 and 443).",
)
@click.option("--ingress-replicas", type=int, default=1, show_default=True)
@click.option(
    "--registry",
    default=_defaults.registry,
    show_default=True,
    help="Where the nodemesh images are pulled from.",
)
@click.option(
    "--version",
    "version",
    default=__version__,
    show_default=True,
    help="Tag of the nodemesh images.",
)
@click.option(
    "--image-pull-policy",
    type=click.Choice(PULL_POLICIES),
    default=_defaults.image_pull_policy,
    show_default=True,
)
@click.option(
    "--cni-conf-dir",
    default=_defaults.cni_conf_dir,
    show_default=True,
    help="The nodes' CNI config directory (where the primary CNI's conflist is).",
)
@click.option(
    "--cni-bin-dir",
    default=_defaults.cni_bin_dir,
    show_default=True,
    help="The nodes' CNI plugin directory.",
)
@click.option("--cluster-domain", default=_defaults.cluster_domain, show_default=True)
@click.option(
    "--trust-domain",
    default=_defaults.trust_domain,
    show_default=True,
    help="SPIFFE trust domain of the workload identities.",
)
@click.option(
    "--identity-trust-anchors-file",
    type=_path,
    help="PEM trust anchor(s) to use instead of generating one.",
)
@click.option(
    "--identity-issuer-certificate-file",
    type=_path,
    help="PEM issuer certificate, signed by a trust anchor.",
)
@click.option("--identity-issuer-key-file", type=_path, help="PEM issuer private key (ECDSA).")
@click.option(
    "--no-router",
    "no_router",
    is_flag=True,
    help="No router mode: the agents open no explicit HTTP proxy port (4144) on the nodes.",
)
def install(
    namespace: str,
    ha: bool,
    controller_replicas: int | None,
    web_replicas: int | None,
    prometheus: bool,
    prometheus_replicas: int,
    ingress: bool,
    ingress_replicas: int,
    registry: str,
    version: str,
    image_pull_policy: str,
    cni_conf_dir: str,
    cni_bin_dir: str,
    cluster_domain: str,
    trust_domain: str,
    identity_trust_anchors_file: Path | None,
    identity_issuer_certificate_file: Path | None,
    identity_issuer_key_file: Path | None,
    no_router: bool,
) -> None:
    """Print the manifests of nodemesh for a cluster: pipe them to `kubectl apply -f -`.

    A trust anchor and an issuer are generated unless all three --identity-* files are given.
    """
    try:
        values = checked(
            InstallValues(
                namespace=namespace,
                registry=registry,
                version=version,
                image_pull_policy=image_pull_policy,
                controller_replicas=controller_replicas or (HA_CONTROLLER_REPLICAS if ha else 1),
                web_replicas=web_replicas or (HA_WEB_REPLICAS if ha else 1),
                prometheus_replicas=prometheus_replicas,
                prometheus=prometheus,
                ha=ha,
                cni_conf_dir=cni_conf_dir,
                cni_bin_dir=cni_bin_dir,
                cluster_domain=cluster_domain,
                trust_domain=trust_domain,
                router=not no_router,
                ingress=ingress,
                ingress_replicas=ingress_replicas,
            )
        )
    except BadValue as e:
        raise click.UsageError(str(e)) from None
    if controller_replicas == 0 or web_replicas == 0:
        raise click.UsageError("replicas must be from 1 to 99")
    files = (
        identity_trust_anchors_file,
        identity_issuer_certificate_file,
        identity_issuer_key_file,
    )
    try:
        if any(files):
            if not all(files):
                raise click.UsageError(
                    "bring your own identity with all three of --identity-trust-anchors-file, "
                    "--identity-issuer-certificate-file and --identity-issuer-key-file"
                )
            ident = identity.load(
                anchors_file=files[0],  # type: ignore[arg-type]
                issuer_cert_file=files[1],  # type: ignore[arg-type]
                issuer_key_file=files[2],  # type: ignore[arg-type]
            )
        else:
            ident = identity.generate(trust_domain=values.trust_domain)
    except identity.BadIdentity as e:
        raise click.ClickException(str(e)) from None
    _warn_expiry(ident)
    header = f"nodemesh {values.version}: apply with `kubectl apply -f -`\n#\n# " + (
        GATEWAY_API_NOTE.replace("\n", "\n# ")
    )
    click.echo(render.to_yaml(render.objects(values, ident), header=header), nl=False)


def _warn_expiry(ident: identity.IdentityFiles) -> None:
    now = datetime.datetime.now(datetime.UTC)
    for what, when, days in (
        ("trust anchor", ident.anchor_not_after, 60),
        ("issuer certificate", ident.issuer_not_after, 1),
    ):
        left = when - now
        if left < datetime.timedelta(days=days):
            click.echo(
                f"warning: the {what} expires in {left.days} day(s) ({when:%Y-%m-%d}); "
                "`nodemesh check` will fail on it",
                err=True,
            )


@click.command()
@click.option(
    "-n", "--nodemesh-namespace", "namespace", default=_defaults.namespace, show_default=True
)
@click.option(
    "--cni-conf-dir",
    default=_defaults.cni_conf_dir,
    show_default=True,
    help="The nodes' CNI config directory (as given to install), for the clean-up hint.",
)
@click.option(
    "--cni-bin-dir",
    default=_defaults.cni_bin_dir,
    show_default=True,
    help="The nodes' CNI plugin directory (as given to install), for the clean-up hint.",
)
def uninstall(namespace: str, cni_conf_dir: str, cni_bin_dir: str) -> None:
    """Print what `install` can create, for `nodemesh uninstall | kubectl delete
    --ignore-not-found -f -` (the list includes the optional add-ons, such as Prometheus, which
    an install may not have created: --ignore-not-found lets kubectl skip those).

    As the agent DaemonSet goes, install-cni restores each node's CNI config byte for byte,
    removes the nodemesh-cni executable and has the agent take its redirect rules out of the
    running pods, which keep working, unmeshed."""
    try:
        values = checked(
            InstallValues(
                namespace=namespace,
                prometheus=True,
                ingress=True,
                cni_conf_dir=cni_conf_dir,
                cni_bin_dir=cni_bin_dir,
            )
        )
    except BadValue as e:
        raise click.UsageError(str(e)) from None
    dummy = identity.IdentityFiles(
        {"ca.crt": b"", "issuer.crt": b"", "issuer.key": b""},
        datetime.datetime.now(datetime.UTC),
        datetime.datetime.now(datetime.UTC),
    )
    # Cluster-scoped objects first (the agents' RBAC among them: install-cni, denied access,
    # knows nodemesh is leaving); the Namespace last takes every namespaced object with it.
    everything = render.objects(values, dummy)
    cluster = [
        o for o in everything if "namespace" not in o["metadata"] and o["kind"] != "Namespace"
    ]
    # The install's own Namespace last (the ingress' goes before it).
    ns = sorted(
        (o for o in everything if o["kind"] == "Namespace"),
        key=lambda o: o["metadata"]["name"] == values.namespace,
    )
    refs: list[Obj] = [
        {
            "apiVersion": o["apiVersion"],
            "kind": o["kind"],
            "metadata": {"name": o["metadata"]["name"]},
        }
        for o in cluster + ns
    ]
    fixup = (
        f"{values.cni_bin_dir}/nodemesh-cni uninstall --conf-dir {values.cni_conf_dir} "
        f"--bin-dir {values.cni_bin_dir}"
    )
    header = (
        f"objects of nodemesh in namespace {namespace}; delete with "
        "`kubectl delete --ignore-not-found -f -`\n"
        "# (optional add-ons such as Prometheus are listed whether or not install created them).\n"
        "# As its agent pod goes, each node gets its CNI config back byte for byte and loses the\n"
        "# nodemesh-cni executable, and the agent takes its redirect rules out of running pods\n"
        "# (they keep working, unmeshed; no restart needed). A node whose agent pod was not\n"
        "# running keeps nodemesh-cni: there, as root on the node itself, run\n"
        f"#   {fixup}\n"
        "# and restart the meshed pods it names."
    )
    click.echo(render.to_yaml(refs, header=header), nl=False)
