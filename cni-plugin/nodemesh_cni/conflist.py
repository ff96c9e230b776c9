"""CNI config documents as data: parse, add or remove the nodemesh-cni entry, render. No I/O."""

from __future__ import annotations

import json

PLUGIN_TYPE = "nodemesh-cni"
CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")


class ConfigError(ValueError):
    """A CNI config file nodemesh cannot patch; the message names the file and the reason."""


def parse(data: bytes, *, source: str) -> dict[str, object]:
    """The config in `data` as a conflist dict (a single .conf is wrapped in one).

    `source` names the file in errors. Raises ConfigError for broken JSON (with line and
    column), a document that is not an object, and a conflist without plugins.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 (byte {exc.start})") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{source}: broken JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a JSON object, found {type(doc).__name__}")
    if "plugins" not in doc:
        if not isinstance(doc.get("type"), str):
            raise ConfigError(f"{source}: neither a conflist (no plugins) nor a conf (no type)")
        return as_conflist(doc)
    plugins = doc["plugins"]
    if not isinstance(plugins, list) or not plugins:
        raise ConfigError(f"{source}: conflist has no plugins")
    for n, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
            raise ConfigError(f"{source}: plugins[{n}] is not a plugin config (no type)")
    return doc


def is_list(data: bytes) -> bool:
    """True when `data` (already known to parse) holds a conflist rather than a single conf."""
    doc = json.loads(data)
    return isinstance(doc, dict) and "plugins" in doc


def as_conflist(conf: dict[str, object]) -> dict[str, object]:
    """A single-plugin conf wrapped as the conflist a runtime would build from it."""
    wrapped: dict[str, object] = {"cniVersion": conf.get("cniVersion", "0.3.1")}
    if "name" in conf:
        wrapped["name"] = conf["name"]
    wrapped["plugins"] = [conf]
    return wrapped


def _plugins(doc: dict[str, object]) -> list[dict[str, object]]:
    plugins = doc["plugins"]
    assert isinstance(plugins, list)
    return plugins


def has_plugin(doc: dict[str, object]) -> bool:
    return any(p.get("type") == PLUGIN_TYPE for p in _plugins(doc))


def with_plugin(doc: dict[str, object], *, entry: dict[str, object]) -> dict[str, object]:
    """`doc` with `entry` as its last plugin and no other nodemesh-cni entry."""
    others = [p for p in _plugins(doc) if p.get("type") != PLUGIN_TYPE]
    return {**doc, "plugins": [*others, entry]}


def without_plugin(doc: dict[str, object]) -> dict[str, object]:
    """`doc` with every nodemesh-cni entry removed."""
    return {**doc, "plugins": [p for p in _plugins(doc) if p.get("type") != PLUGIN_TYPE]}


def render(doc: dict[str, object]) -> bytes:
    """Deterministic bytes, so that re-rendering an unchanged document is a byte-for-byte no-op."""
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def plugin_entry(
    *,
    agent_socket: str = "/var/run/nodemesh/cni.sock",
    failure_policy: str = "fail-closed",
    exclude_namespaces: tuple[str, ...] = ("kube-system", "nodemesh"),
    log_level: str = "info",
    log_file: str = "/var/log/nodemesh-cni.log",
) -> dict[str, object]:
    """The entry install-cni appends; the keys are the ones nodemesh-cni reads."""
    return {
        "type": PLUGIN_TYPE,
        "agentSocket": agent_socket,
        "failurePolicy": failure_policy,
        "excludeNamespaces": list(exclude_namespaces),
        "logLevel": log_level,
        "logFile": log_file,
    }
