"""What the runtime asked for: the CNI environment and stdin config, parsed and validated.

No I/O here: `parse_invocation` takes the environment and the stdin bytes and either returns an
`Invocation` or raises `CniError` carrying the spec's well-known code.
"""

from __future__ import annotations

import json

# Oldest first; VERSION reports them in this order.
SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")

# The spec's well-known error codes (0-99 are reserved for these).
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_ENV = 4
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_PLUGIN_NOT_AVAILABLE = 50
# nodemesh-cni's own codes (100+ are free for plugins).
ERR_AGENT_FAILED = 100
ERR_NOT_ENROLLED = 101
ERR_AGENT_PROTOCOL = 102
ERR_INTERNAL = 999

# The commands each spec version knows; asking for more is an incompatible-version error.
_FIRST_VERSION_WITH = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}
# Environment variables each command cannot do without. CNI_PATH is not listed: nodemesh-cni
# delegates to no other plugin, so it has no use for it.
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "STATUS": (),
    "GC": (),
}
_POD_ARGS = ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID")

DEFAULT_AGENT_SOCKET = "/var/run/nodemesh/cni.sock"
DEFAULT_EXCLUDED_NAMESPACES = ("kube-system", "nodemesh")
DEFAULT_LOG_FILE = "/var/log/nodemesh-cni.log"
DEFAULT_AGENT_TIMEOUT = 30.0
FAILURE_POLICIES = ("fail-closed", "fail-open")
LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40}


class CniError(Exception):
    """A failure reported to the runtime as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, object]:
        return {
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        }


class PluginConfig:
    """The keys nodemesh-cni reads from its entry in the conflist."""

    __slots__ = (
        "agent_socket",
        "failure_policy",
        "exclude_namespaces",
        "log_level",
        "log_file",
        "agent_timeout",
        "meshed_namespaces_file",
    )

    def __init__(self, conf: dict[str, object]) -> None:
        self.agent_socket = _opt_str(conf, "agentSocket", DEFAULT_AGENT_SOCKET, empty=False)
        self.failure_policy = _opt_str(conf, "failurePolicy", "fail-closed", empty=False)
        if self.failure_policy not in FAILURE_POLICIES:
            raise CniError(
                ERR_INVALID_CONFIG,
                f"failurePolicy must be one of {', '.join(FAILURE_POLICIES)}",
                f"got {self.failure_policy!r}",
            )
        excluded = conf.get("excludeNamespaces", list(DEFAULT_EXCLUDED_NAMESPACES))
        if not isinstance(excluded, list) or not all(isinstance(n, str) for n in excluded):
            raise CniError(ERR_INVALID_CONFIG, "excludeNamespaces must be a list of strings")
        self.exclude_namespaces = frozenset(excluded)
        level = _opt_str(conf, "logLevel", "info", empty=False).lower()
        if level not in LOG_LEVELS:
            raise CniError(
                ERR_INVALID_CONFIG,
                "logLevel must be one of debug, info, warning, error",
                f"got {level!r}",
            )
        self.log_level = LOG_LEVELS[level]
        # An empty logFile turns file logging off (stderr only).
        self.log_file = _opt_str(conf, "logFile", DEFAULT_LOG_FILE, empty=True)
        timeout = conf.get("agentTimeoutSeconds", DEFAULT_AGENT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise CniError(ERR_INVALID_CONFIG, "agentTimeoutSeconds must be a positive number")
        self.agent_timeout = float(timeout)
        # Written by the agent beside its socket; read when the agent does not answer.
        self.meshed_namespaces_file = _opt_str(
            conf,
            "meshedNamespacesFile",
            self.agent_socket.rpartition("/")[0] + "/meshed-namespaces.json",
            empty=False,
        )

    @property
    def fail_open(self) -> bool:
        return self.failure_policy == "fail-open"


def _opt_str(conf: dict[str, object], key: str, default: str, *, empty: bool) -> str:
    value = conf.get(key, default)
    if not isinstance(value, str) or (not empty and not value):
        raise CniError(ERR_INVALID_CONFIG, f"{key} must be a non-empty string", f"got {value!r}")
    return value


class Invocation:
    """One run of the plugin: command, attachment parameters, pod identity and config."""

    __slots__ = (
        "command",
        "cni_version",
        "container_id",
        "netns",
        "ifname",
        "pod_namespace",
        "pod_name",
        "pod_uid",
        "conf",
        "config",
    )

    def __init__(
        self,
        *,
        command: str,
        cni_version: str,
        container_id: str,
        netns: str,
        ifname: str,
        pod_namespace: str,
        pod_name: str,
        pod_uid: str,
        conf: dict[str, object],
        config: PluginConfig,
    ) -> None:
        self.command = command
        self.cni_version = cni_version
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.pod_namespace = pod_namespace
        self.pod_name = pod_name
        self.pod_uid = pod_uid
        self.conf = conf
        self.config = config

    @property
    def prev_result(self) -> dict[str, object] | None:
        value = self.conf.get("prevResult")
        return value if isinstance(value, dict) else None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def decode_config(stdin: bytes) -> dict[str, object]:
    """The network config on stdin; CniError 6 when it is not a JSON object."""
    try:
        conf = json.loads(stdin)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise CniError(ERR_DECODE, "failed to decode network config from stdin", str(exc)) from exc
    if not isinstance(conf, dict):
        raise CniError(
            ERR_DECODE,
            "failed to decode network config from stdin",
            f"expected a JSON object, got {type(conf).__name__}",
        )
    return conf


def error_version(stdin: bytes) -> str:
    """The cniVersion to put in an error reply: the config's when it is one we speak."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, RecursionError, AttributeError):
        return LATEST_VERSION
    return version if version in SUPPORTED_VERSIONS else LATEST_VERSION


def version_reply(stdin: bytes) -> dict[str, object]:
    """The VERSION result; never an error, whatever the runtime sent."""
    return {"cniVersion": error_version(stdin), "supportedVersions": list(SUPPORTED_VERSIONS)}


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS ("K1=V1;K2=V2") as a dict; CniError 4 for a pair that is not KEY=VALUE."""
    args: dict[str, str] = {}
    for pair in raw.split(";"):
        if not pair:
            continue  # tolerate "A=1;" and an empty CNI_ARGS
        key, sep, value = pair.partition("=")
        if not sep or not key or "=" in value:
            raise CniError(ERR_INVALID_ENV, "invalid CNI_ARGS", f"pair {pair!r} is not KEY=VALUE")
        args[key] = value
    return args


def _check_container_id(value: str) -> None:
    if not (value[:1].isascii() and value[:1].isalnum()) or not all(
        c.isascii() and (c.isalnum() or c in "_.-") for c in value
    ):
        raise CniError(
            ERR_INVALID_ENV,
            "invalid CNI_CONTAINERID",
            "must start with a letter or digit and hold only letters, digits, _ . -",
        )


def _check_ifname(value: str) -> None:
    # Linux interface names: at most 15 bytes, no "/", ":" or whitespace, not "." or "..".
    if (
        len(value.encode()) > 15
        or value in (".", "..")
        or any(c in "/:" or c.isspace() for c in value)
    ):
        raise CniError(ERR_INVALID_ENV, "invalid CNI_IFNAME", f"{value!r} is not a valid name")


def _check_network_name(conf: dict[str, object]) -> None:
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(ERR_INVALID_CONFIG, "network config has no name")
    if not (name[0].isascii() and name[0].isalnum()) or not all(
        c.isascii() and (c.isalnum() or c in "_.-") for c in name
    ):
        raise CniError(ERR_INVALID_CONFIG, "invalid network name", f"{name!r}")


def _check_version(command: str, conf: dict[str, object]) -> str:
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(ERR_INVALID_CONFIG, "network config has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {version!r}, nodemesh-cni supports {', '.join(SUPPORTED_VERSIONS)}",
        )
    first = _FIRST_VERSION_WITH.get(command)
    if first and _version_key(version) < _version_key(first):
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"config version does not allow {command}",
            f"{command} needs cniVersion {first} or later, config is {version}",
        )
    return version


def parse_invocation(environ: dict[str, str], stdin: bytes) -> Invocation:
    """The validated invocation for any command but VERSION (see `version_reply`)."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(ERR_INVALID_ENV, "CNI_COMMAND is not set")
    if command not in COMMANDS or command == "VERSION":
        raise CniError(ERR_INVALID_ENV, f"unknown CNI_COMMAND {command!r}")
    for var in _REQUIRED_ENV[command]:
        if not environ.get(var):
            raise CniError(ERR_INVALID_ENV, f"{var} is not set", f"{command} needs {var}")
    container_id = environ.get("CNI_CONTAINERID", "")
    ifname = environ.get("CNI_IFNAME", "")
    if container_id:
        _check_container_id(container_id)
    if ifname:
        _check_ifname(ifname)
    args = parse_cni_args(environ.get("CNI_ARGS", ""))

    conf = decode_config(stdin)
    version = _check_version(command, conf)
    _check_network_name(conf)
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(ERR_INVALID_CONFIG, "prevResult must be a JSON object")
    if command in ("ADD", "CHECK") and prev is None:
        raise CniError(
            ERR_INVALID_CONFIG,
            f"{command} needs prevResult",
            "nodemesh-cni must be chained after a plugin that creates the pod interface",
        )
    return Invocation(
        command=command,
        cni_version=version,
        container_id=container_id,
        netns=environ.get("CNI_NETNS", ""),
        ifname=ifname,
        pod_namespace=args.get(_POD_ARGS[0], ""),
        pod_name=args.get(_POD_ARGS[1], ""),
        pod_uid=args.get(_POD_ARGS[2], ""),
        conf=conf,
        config=PluginConfig(conf),
    )
