"""Resource arguments as users type them: `deploy`, `deploy web`, `deploy/web`, `ns/emojivoto`."""

from __future__ import annotations

import click

from nodemesh import kinds
from nodemesh.api import public_pb2 as pb
from nodemesh.kinds import CLUSTER_SCOPED, KIND_ALIASES, SHORT


def canonical(kind: str, *, param: str = "RESOURCE") -> str:
    try:
        return kinds.canonical(kind)
    except kinds.UnknownKind:
        raise click.BadParameter(
            f"unknown resource {kind!r}: use one of {kinds.KNOWN}", param_hint=param
        ) from None


def parse(text: str, name: str | None = None, *, param: str = "RESOURCE") -> tuple[str, str]:
    """(canonical kind, name or "") from `kind`, `kind name` or `kind/name`."""
    kind, slash, inline = text.partition("/")
    if slash and name:
        raise click.BadParameter(f"give the name once: {text!r} or {kind} {name}", param_hint=param)
    if slash and not inline:
        raise click.BadParameter(f"{text!r} has no name after the '/'", param_hint=param)
    return canonical(kind, param=param), inline or name or ""


def message(kind: str, name: str, namespace: str) -> pb.Resource:
    ns = "" if kind in CLUSTER_SCOPED else namespace
    return pb.Resource(kind=kind, namespace=ns, name=name)


def option_resource(text: str | None, namespace: str, *, param: str) -> pb.Resource | None:
    """--from/--to values: KIND/NAME or KIND, in the command's namespace."""
    if not text:
        return None
    kind, name = parse(text, param=param)
    return message(kind, name, namespace)


def label(kind: str, name: str) -> str:
    return f"{SHORT.get(kind, kind)}/{name}"


def short_kind(kind: str) -> str:
    """A workload kind as the tables name it (deploy, pod, ...), whatever its case: the agent
    sends `deployment`, Kubernetes `Deployment`."""
    lower = kind.lower() or "pod"
    return SHORT.get(KIND_ALIASES.get(lower, lower), lower)
