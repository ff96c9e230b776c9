"""Every object of an install, in apply order, and their YAML stream."""

from __future__ import annotations

import yaml

from nodemesh.cli.install import access, addons, agent, controlplane, crds, ingress
from nodemesh.cli.install.identity import IdentityFiles
from nodemesh.cli.install.meta import Obj
from nodemesh.cli.install.values import InstallValues
from nodemesh.identity import CA_FILE


def objects(values: InstallValues, identity: IdentityFiles) -> list[Obj]:
    out = crds.objects()  # first: the control plane watches them
    out += [addons.namespace(values), addons.config_map(values, identity.data[CA_FILE])]
    out += controlplane.objects(values, identity.data)
    out += agent.objects(values)
    out += addons.dashboard(values)
    out += access.objects(values)
    if values.prometheus:
        out += addons.prometheus(values)
    if values.ingress:
        out += ingress.objects(values)
    return out


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (certificates, configs) so the output reads well."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objs: list[Obj], *, header: str) -> str:
    docs = [yaml.dump(o, Dumper=_Dumper, sort_keys=False, width=100) for o in objs]
    return f"# {header}\n---\n" + "---\n".join(docs)
