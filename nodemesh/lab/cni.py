"""Running a CNI plugin chain the way a container runtime does (libcni's conflist semantics).

`invocations()` is sans-io: it says, for one command, which plugin runs with which environment
and which stdin, threading prevResult from plugin to plugin (ADD) or handing the cached result to
each (CHECK, DEL in reverse). `CniRunner` executes them inside a node's network namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK_CONF: dict[str, Any] = {"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}


class CniError(RuntimeError):
    """A plugin failed; carries the spec's error fields."""

    def __init__(self, plugin: str, code: int, msg: str, details: str = "") -> None:
        self.plugin, self.code, self.msg, self.details = plugin, code, msg, details
        text = f"CNI plugin {plugin} failed (code {code}): {msg}"
        super().__init__(text + (f" ({details})" if details else ""))

    @property
    def try_again(self) -> bool:
        return self.code == 11


@dataclass(frozen=True)
class PodAttachment:
    """What a runtime knows of the pod it wires."""

    container_id: str
    netns: str  # path, e.g. /run/netns/<name>
    ifname: str
    namespace: str
    name: str
    uid: str

    @property
    def cni_args(self) -> str:
        # IgnoreUnknown first: plugins that do not know K8S_* args would refuse them otherwise.
        return (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.name};"
            f"K8S_POD_INFRA_CONTAINER_ID={self.container_id};K8S_POD_UID={self.uid}"
        )


@dataclass(frozen=True)
class Invocation:
    plugin_type: str
    env: dict[str, str]
    stdin: dict[str, Any] = field(hash=False)


def invocations(
    conflist: dict[str, Any],
    *,
    command: str,
    pod: PodAttachment,
    cni_path: Sequence[str],
    cached_result: dict[str, Any] | None = None,
) -> list[Invocation]:
    """The invocations for ADD/CHECK/DEL. For ADD the prevResult of each plugin but the first is
    the previous plugin's output, which the caller substitutes as it goes (see `with_prev`)."""
    if command not in ("ADD", "CHECK", "DEL"):
        raise ValueError(f"unknown CNI command {command!r}")
    plugins = conflist.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise ValueError("conflist has no plugins")
    version = conflist.get("cniVersion", "1.0.0")
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": pod.container_id,
        "CNI_NETNS": pod.netns,
        "CNI_IFNAME": pod.ifname,
        "CNI_ARGS": pod.cni_args,
        "CNI_PATH": os.pathsep.join(cni_path),
    }
    order = list(reversed(plugins)) if command == "DEL" else list(plugins)
    out = []
    for plugin in order:
        stdin = dict(plugin)
        stdin["name"] = conflist["name"]
        stdin["cniVersion"] = version
        if command != "ADD" and cached_result is not None:
            stdin["prevResult"] = cached_result
        out.append(Invocation(plugin["type"], dict(env), stdin))
    return out


def with_prev(inv: Invocation, prev: dict[str, Any] | None) -> Invocation:
    if prev is None:
        return inv
    stdin = dict(inv.stdin)
    stdin["prevResult"] = prev
    return Invocation(inv.plugin_type, inv.env, stdin)


def find_plugin(plugin_type: str, cni_path: Sequence[str]) -> str:
    for d in cni_path:
        candidate = Path(d) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise CniError(plugin_type, 7, f"plugin {plugin_type!r} not found in {list(cni_path)}")


# A plugin runs with the node's files (a mount namespace of its own): the node's /run (its
# /run/netns, /run/nodemesh, /run/cni) and /var/log. The executable is opened before, as it may
# lie in the node's directory, which the node's own /run hides.
NODE_VIEW = (
    'exec 3<"$1" || exit 1; '
    'mount --bind "$2/var/log" /var/log && mount --rbind "$2/run" /run && exec /proc/self/fd/3'
)


class CniRunner:
    """Executes plugin chains inside a node's network namespace, as its runtime would."""

    def __init__(
        self,
        *,
        node_netns_path: str,
        cni_path: Sequence[str],
        timeout: float = 30,
        node_root: str | None = None,
    ):
        self.node_netns_path = node_netns_path
        self.cni_path = list(cni_path)
        self.timeout = timeout
        self.node_root = node_root

    def argv(self, exe: str) -> list[str]:
        argv = ["nsenter", f"--net={self.node_netns_path}"]
        if self.node_root is None:
            return [*argv, exe]
        return [*argv, "unshare", "--mount", "--propagation", "slave",
                "sh", "-c", NODE_VIEW, "cni-node-view", exe, self.node_root]  # fmt: skip

    async def run_chain(
        self,
        conflist: dict[str, Any],
        *,
        command: str,
        pod: PodAttachment,
        cached_result: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        result: dict[str, Any] | None = None
        invs = invocations(
            conflist, command=command, pod=pod, cni_path=self.cni_path, cached_result=cached_result
        )
        first_error: CniError | None = None
        for inv in invs:
            if command == "ADD":
                inv = with_prev(inv, result)
            try:
                out = await self.run_one(inv)
            except CniError as e:
                # libcni stops at the first failing DEL and relies on the kubelet retrying; the
                # lab goes on with the other plugins so that one missing plugin cannot keep an
                # address allocated, and reports the first failure.
                if command != "DEL":
                    raise
                first_error = first_error or e
                continue
            if command == "ADD":
                result = out
        if first_error is not None:
            raise first_error
        return result

    async def run_one(self, inv: Invocation) -> dict[str, Any] | None:
        exe = find_plugin(inv.plugin_type, self.cni_path)
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **inv.env}
        proc = await asyncio.create_subprocess_exec(
            *self.argv(exe),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(
                proc.communicate(json.dumps(inv.stdin).encode()), self.timeout
            )
        except TimeoutError:
            raise CniError(inv.plugin_type, 11, f"timed out after {self.timeout:g} s") from None
        finally:
            # Cancelled or timed out: never leave a plugin running behind us.
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return parse_output(inv.plugin_type, proc.returncode or 0, stdout, stderr)


def parse_output(
    plugin: str, returncode: int, stdout: bytes, stderr: bytes
) -> dict[str, Any] | None:
    text = stdout.decode(errors="replace").strip()
    if returncode != 0:
        try:
            err = json.loads(text)
            code, msg, details = int(err["code"]), str(err.get("msg", "")), err.get("details", "")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            msg = (text or stderr.decode(errors="replace")).strip()[:500]
            raise CniError(plugin, 999, f"exit status {returncode}: {msg}") from None
        raise CniError(plugin, code, msg, str(details))
    if not text:
        return None
    try:
        result = json.loads(text)
    except json.JSONDecodeError as e:
        raise CniError(plugin, 999, f"result is not JSON: {e}") from None
    if not isinstance(result, dict):
        raise CniError(plugin, 999, "result is not a JSON object")
    return result


def pod_ip(result: dict[str, Any]) -> str:
    """The pod's IPv4 address from a CNI result (the first IP on a sandbox interface)."""
    ifaces = result.get("interfaces") or []
    for ip in result.get("ips") or []:
        idx = ip.get("interface")
        if idx is None or (0 <= idx < len(ifaces) and ifaces[idx].get("sandbox")):
            return str(ip["address"]).split("/")[0]
    raise CniError("result", 999, "the CNI result names no IP address for the pod")
