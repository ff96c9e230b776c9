"""nodemesh-cni: the chained CNI plugin that enrols pods with the node agent.

The container runtime runs it as the last plugin of the node's conflist, with the CNI_* variables
in the environment and the network config on stdin. It passes prevResult through and asks the
agent (over a unix socket, see protocol.py) to put the pod's redirection rules and listeners in
place before the pod may start. Standard library only; stdout carries the result and nothing else.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from nodemesh_cni.agentclient import AgentProtocolError, AgentUnavailable, call_agent
from nodemesh_cni.invocation import (
    ERR_AGENT_FAILED,
    ERR_AGENT_PROTOCOL,
    ERR_INTERNAL,
    ERR_INVALID_CONFIG,
    ERR_NOT_ENROLLED,
    ERR_PLUGIN_NOT_AVAILABLE,
    ERR_TRY_AGAIN_LATER,
    CniError,
    Invocation,
    error_version,
    parse_invocation,
    version_reply,
)
from nodemesh_cni.pluginlog import PluginLog
from nodemesh_cni.protocol import Attachment, Interface, Pod, PodIP, Reply, Request
from nodemesh_cni.runfiles import RunFileError, read_meshed

# Commands that only tidy up get shorter deadlines than ADD: the runtime is waiting on them and
# the agent reconciles on its own anyway.
_SHORT_TIMEOUT = 5.0


def run(environ: dict[str, str], stdin: bytes, *, log: PluginLog) -> tuple[bytes, int]:
    """Execute one CNI invocation; returns (stdout bytes, exit status)."""
    command = environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        return _dump(version_reply(stdin)), 0
    try:
        inv = parse_invocation(environ, stdin)
    except CniError as err:
        log.error(f"{command or '<no CNI_COMMAND>'}: {err.msg}: {err.details}".rstrip(": "))
        return _dump(err.to_json(error_version(stdin))), 1
    log.level = inv.config.log_level
    log.prefix = f"{inv.command} {inv.container_id[:12] or '-'} "
    if inv.pod_namespace:
        log.prefix += f"{inv.pod_namespace}/{inv.pod_name} "
    log.open_file(inv.config.log_file)
    try:
        result = _HANDLERS[inv.command](inv, log)
    except CniError as err:
        log.error(f"{err.msg}: {err.details}" if err.details else err.msg)
        return _dump(err.to_json(inv.cni_version)), 1
    return (b"" if result is None else _dump(result)), 0


def _dump(obj: dict[str, object]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# --- talking to the agent ---------------------------------------------------------------------


def _ask(inv: Invocation, request: Request, *, timeout: float) -> Reply:
    """The agent's Reply, or the AgentUnavailable/AgentProtocolError raised on the way."""
    return call_agent(inv.config.agent_socket, request, timeout=timeout)


def _pod_from(inv: Invocation) -> Pod:

    prev = inv.prev_result or {}
    interfaces, ips = prev.get("interfaces", []), prev.get("ips", [])
    if not isinstance(interfaces, list) or not isinstance(ips, list):
        raise CniError(ERR_INVALID_CONFIG, "prevResult interfaces and ips must be lists")
    try:
        return Pod(
            container_id=inv.container_id,
            netns=inv.netns,
            ifname=inv.ifname,
            namespace=inv.pod_namespace,
            name=inv.pod_name,
            uid=inv.pod_uid,
            interfaces=tuple(
                Interface(
                    name=_text(i["name"]),
                    mac=_text(i.get("mac", "")),
                    sandbox=_text(i.get("sandbox", "")),
                )
                for i in interfaces
            ),
            ips=tuple(
                PodIP(
                    address=_text(ip["address"]),
                    gateway=_text(ip.get("gateway", "")),
                    interface=_index(ip.get("interface")),
                )
                for ip in ips
            ),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise CniError(
            ERR_INVALID_CONFIG, "prevResult interfaces or ips are malformed", repr(exc)
        ) from exc


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _index(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"interface index {value!r}")
    return value


def _unreachable(inv: Invocation, reason: str) -> CniError:
    return CniError(
        ERR_TRY_AGAIN_LATER,
        f"nodemesh agent not reachable at {inv.config.agent_socket}: try again later",
        reason,
    )


def _waits_for_agent(inv: Invocation, reason: str, log: PluginLog) -> CniError | None:
    """With the agent unreachable: the error that holds a pod meant to be meshed, or None for a
    pod of a namespace the agent last said is not meshed (it starts; nothing of ours applies)."""
    path = inv.config.meshed_namespaces_file
    try:
        meshed = read_meshed(Path(path))
    except RunFileError as exc:
        why = f"cannot tell whether {inv.pod_namespace} is meshed"
        return _unreachable(inv, f"{reason}; {why}: {exc}")
    if meshed is None:
        return _unreachable(
            inv,
            f"{reason}; the agent has not yet recorded which namespaces are meshed ({path} "
            "missing), so every pod waits",
        )
    if inv.pod_namespace in meshed:
        return _unreachable(
            inv, f"{reason}; namespace {inv.pod_namespace} is meshed ({path}): the pod waits"
        )
    log.warning(
        f"agent not reachable ({reason}); namespace {inv.pod_namespace} is not meshed "
        f"according to {path}: passing through"
    )
    return None


def _knows_meshed_namespaces(inv: Invocation) -> bool:
    try:
        return read_meshed(Path(inv.config.meshed_namespaces_file)) is not None
    except RunFileError:
        return False


def _passes_by(inv: Invocation, log: PluginLog) -> bool:
    """True when the pod is none of nodemesh's business (not Kubernetes, or excluded)."""
    if not inv.pod_namespace:
        log.info("no K8S_POD_NAMESPACE in CNI_ARGS: not a Kubernetes pod, passing through")
        return True
    if inv.pod_namespace in inv.config.exclude_namespaces:
        log.debug(f"namespace {inv.pod_namespace} is excluded, passing through")
        return True
    return False


# --- commands ---------------------------------------------------------------------------------


def _add(inv: Invocation, log: PluginLog) -> dict[str, object] | None:

    if _passes_by(inv, log):
        return inv.prev_result
    request = Request(command="add", pod=_pod_from(inv))
    try:
        reply = _ask(inv, request, timeout=inv.config.agent_timeout)
    except AgentUnavailable as exc:
        held = _waits_for_agent(inv, str(exc), log)
        if held is None:
            return inv.prev_result
        failure = held
    except AgentProtocolError as exc:
        failure = CniError(ERR_AGENT_PROTOCOL, "nodemesh agent sent an invalid reply", str(exc))
    else:
        status, message = reply.status, reply.message
        if status == "ok":
            what = "enrolled" if reply.meshed else "not meshed"
            log.info(f"{what}: {message}" if message else what)
            return inv.prev_result
        if status == "retry":
            failure = CniError(
                ERR_TRY_AGAIN_LATER, f"nodemesh agent is not ready: try again later ({message})"
            )
        else:
            failure = CniError(
                ERR_AGENT_FAILED, f"nodemesh agent could not enrol the pod: {message}"
            )
    if inv.config.fail_open:
        log.warning(f"failurePolicy fail-open: pod starts outside the mesh: {failure.msg}")
        return inv.prev_result
    raise failure


def _del(inv: Invocation, log: PluginLog) -> None:

    # prevResult is optional on DEL and may be stale; the agent finds the pod by container id.
    pod = _pod_from(inv) if inv.prev_result is not None else _pod_from_env(inv)
    try:
        reply = _ask(inv, Request(command="del", pod=pod), timeout=_SHORT_TIMEOUT)
    except AgentUnavailable as exc:
        log.warning(f"agent not reachable ({exc}); it removes what is left when it is back")
        return None
    except AgentProtocolError as exc:
        log.warning(f"agent sent an invalid reply to DEL: {exc}")
        return None
    if reply.status == "ok":
        log.info("removed")
    else:
        # DEL must not fail: a failed DEL keeps the pod sandbox around for ever.
        log.warning(f"agent could not remove the pod now: {reply.message}")
    return None


def _pod_from_env(inv: Invocation) -> Pod:

    return Pod(
        container_id=inv.container_id,
        netns=inv.netns,
        ifname=inv.ifname,
        namespace=inv.pod_namespace,
        name=inv.pod_name,
        uid=inv.pod_uid,
    )


def _check(inv: Invocation, log: PluginLog) -> None:

    if _passes_by(inv, log):
        return None
    try:
        reply = _ask(inv, Request(command="check", pod=_pod_from(inv)), timeout=_SHORT_TIMEOUT)
    except AgentUnavailable as exc:
        if inv.config.fail_open:
            log.warning(f"failurePolicy fail-open: agent not reachable ({exc}), CHECK passes")
            return None
        held = _waits_for_agent(inv, str(exc), log)
        if held is None:
            return None
        raise held from None
    except AgentProtocolError as exc:
        raise CniError(
            ERR_AGENT_PROTOCOL, "nodemesh agent sent an invalid reply", str(exc)
        ) from None
    status, message = reply.status, reply.message
    if status == "ok":
        return None
    if status == "retry":
        raise CniError(ERR_TRY_AGAIN_LATER, f"nodemesh agent is not ready: {message}")
    raise CniError(ERR_NOT_ENROLLED, f"pod is not enrolled in the mesh: {message}")


def _status(inv: Invocation, log: PluginLog) -> None:

    try:
        reply = _ask(inv, Request(command="status"), timeout=_SHORT_TIMEOUT)
    except AgentUnavailable as exc:
        reason = f"nodemesh agent not reachable at {inv.config.agent_socket}: {exc}"
        if _knows_meshed_namespaces(inv):
            # A runtime that gets "not available" stops creating every pod on the node; with the
            # agent's record, only pods of meshed namespaces are held (each ADD says so).
            log.warning(f"{reason}; pods of namespaces not meshed can still start")
            return None
    except AgentProtocolError as exc:
        reason = f"nodemesh agent not reachable at {inv.config.agent_socket}: {exc}"
    else:
        if reply.status == "ok":
            return None
        reason = f"nodemesh agent not ready: {reply.message}"
    if inv.config.fail_open:
        log.warning(f"failurePolicy fail-open: reporting available although {reason}")
        return None
    raise CniError(ERR_PLUGIN_NOT_AVAILABLE, "plugin not available", reason)


def _gc(inv: Invocation, log: PluginLog) -> None:

    valid = inv.conf.get("cni.dev/valid-attachments", [])
    if not isinstance(valid, list):
        raise CniError(ERR_INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    try:
        attachments = tuple(
            Attachment(container_id=_text(a["containerID"]), ifname=_text(a["ifname"]))
            for a in valid
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CniError(
            ERR_INVALID_CONFIG, "cni.dev/valid-attachments entries need containerID and ifname"
        ) from exc
    try:
        reply = _ask(inv, Request(command="gc", attachments=attachments), timeout=_SHORT_TIMEOUT)
    except (AgentUnavailable, AgentProtocolError) as exc:
        log.info(f"agent not reachable ({exc}); it collects stale pods itself when it starts")
        return None
    if reply.status != "ok":
        log.warning(f"agent could not collect stale pods: {reply.message}")
    return None


_HANDLERS = {"ADD": _add, "DEL": _del, "CHECK": _check, "STATUS": _status, "GC": _gc}


def main() -> int:
    """Entry point for the runtime: env + stdin in, result on stdout, logs on stderr."""
    log = PluginLog()
    try:
        stdin = sys.stdin.buffer.read() if sys.stdin is not None else b""
        out, status = run(dict(os.environ), stdin, log=log)
    except Exception as exc:  # the runtime must get JSON, never a bare traceback
        log.error(f"internal error: {exc!r}")
        err = CniError(ERR_INTERNAL, "nodemesh-cni internal error", repr(exc))
        out, status = _dump(err.to_json(error_version(b""))), 1
    finally:
        log.close()
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
