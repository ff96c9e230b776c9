"""What a lab container gets, as a kubelet + runc would give it (sans-io: pod spec in, the spec
that container_init.py carries out): the mounts that hide the host's /run, /tmp, homes, the lab's
state and other pods' files; the pod's declared volumes where declared; the runtime's default
capabilities plus `add` minus `drop`; runAsUser/runAsGroup; a read-only root on request."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Linux capability numbers (linux/capability.h).
CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]
# containerd's default set (the one Kubernetes nodes run with): no NET_ADMIN, no SYS_ADMIN.
DEFAULT_CAPABILITIES = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    }
)
# Host paths no container sees (an empty tmpfs over each), with the mode of the empty dir.
HIDDEN = (
    ("/run", "755"),
    ("/tmp", "1777"),
    ("/var/tmp", "1777"),
    ("/root", "755"),
    ("/home", "755"),
    ("/etc/netns", "755"),
)
# The container wrapper, run with the lab's Python in isolated mode (it needs only the stdlib).
INIT = (sys.executable, "-I", "-S", str(Path(__file__).with_name("container_init.py")))
IMAGE_PATHS = (sys.base_prefix, sys.prefix, str(Path(__file__).resolve().parents[2]))
HOSTPATH_TYPES = {
    "",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
    "CharDevice",
    "BlockDevice",
}


# A node's own files: hostPaths under these are each lab node's (its directory stands in for
# the node's root filesystem), as the agent DaemonSet's are on a cluster. Other hostPaths are this
# machine's, shared by every lab node (test fixtures, the lab's own state under its directory).
NODE_PATHS = ("/etc/cni", "/opt/cni", "/run", "/var/run", "/var/lib/cni", "/var/log")
# configMap, secret and projected volumes: the files of a volume (path -> content, mode), or
# ContainerConfigError naming what is missing (the kubelet's CreateContainerConfigError).
VolumeFiles = Callable[[dict[str, Any]], dict[str, tuple[bytes, int]]]


def node_host_path(path: Path, *, node_root: Path | None, lab_root: Path) -> Path:
    """Where a hostPath lies for a pod on the node whose root is `node_root`."""
    if node_root is None or lab_root.parent in (path, *path.parents):
        return path
    if not any(path == Path(p) or Path(p) in path.parents for p in NODE_PATHS):
        return path
    rel = path.relative_to("/")
    if rel.parts[:2] == ("var", "run"):  # /var/run is /run on a node
        rel = Path("run", *rel.parts[2:])
    return node_root / rel


_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args, env values and subPathExpr; unknown refs
    stay as they are."""
    return _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


class ContainerConfigError(ValueError):
    """The pod's spec asks for something the lab cannot give (the kubelet's
    CreateContainerConfigError); the message names the field."""


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool
    host_to_container: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "readOnly": self.read_only,
            "hostToContainer": self.host_to_container,
        }


def capabilities(security: dict[str, Any], *, where: str) -> list[int]:
    """The runtime's default set, minus `drop` (ALL: everything), plus `add` (ALL: everything)."""
    caps = security.get("capabilities") or {}

    def names(key: str) -> set[str]:
        out = set()
        for i, raw in enumerate(caps.get(key) or []):
            name = str(raw).upper().removeprefix("CAP_")
            if name != "ALL" and name not in CAPABILITIES:
                raise ContainerConfigError(
                    f"{where}.securityContext.capabilities.{key}[{i}]: unknown capability {raw!r}"
                )
            out.add(name)
        return out

    if security.get("privileged"):
        return list(range(len(CAPABILITIES)))
    drop, add = names("drop"), names("add")
    have = set() if "ALL" in drop else set(DEFAULT_CAPABILITIES) - drop
    have |= set(CAPABILITIES) if "ALL" in add else add
    return sorted(CAPABILITIES.index(c) for c in have)


def _under_hidden(path: Path) -> bool:
    return any(path == Path(h) or Path(h) in path.parents for h, _ in HIDDEN)


def _security(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    own = (container.get("securityContext") or {}).get(key)
    return own if own is not None else (pod["spec"].get("securityContext") or {}).get(key)


def volume_mounts(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    env: dict[str, str],
    volume_dir: Path,
    lab_root: Path,
    where: str,
    node_root: Path | None = None,
    volume_files: VolumeFiles | None = None,
) -> list[Mount]:
    """Each volumeMount as a bind mount from the host; emptyDirs and the files of configMap,
    secret and projected volumes live in `volume_dir`."""
    volumes = {v.get("name"): v for v in pod["spec"].get("volumes") or []}
    mounts = []
    for i, vm in enumerate(container.get("volumeMounts") or []):
        at = f"{where}.volumeMounts[{i}]"
        vol = volumes.get(vm.get("name"))
        if vol is None:
            raise ContainerConfigError(f"{at}.name: no volume {vm.get('name')!r} in spec.volumes")
        target = str(vm.get("mountPath") or "")
        if not target.startswith("/"):
            raise ContainerConfigError(f"{at}.mountPath: must be an absolute path, not {target!r}")
        read_only = bool(vm.get("readOnly"))
        if "hostPath" in vol:
            source = _host_path(
                vol, lab_root=lab_root, node_root=node_root, where=f"volume {vol['name']!r}"
            )
        elif "emptyDir" in vol:
            source = volume_dir / str(vol["name"])
            source.mkdir(parents=True, exist_ok=True)
            source.chmod(0o777)  # as the kubelet makes them: any user of the pod may write
        elif volume_files is not None and any(k in vol for k in FILE_VOLUMES):
            source = _write_files(volume_dir / str(vol["name"]), volume_files(vol))
            read_only = True  # the kubelet mounts these read-only whatever the mount says
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise ContainerConfigError(
                f"spec.volumes ({vol['name']}): the lab supports hostPath, emptyDir, configMap, "
                f"secret and projected volumes, not {', '.join(kinds) or 'an empty volume'}"
            )
        sub = vm.get("subPath") or (
            expand(str(vm["subPathExpr"]), env) if vm.get("subPathExpr") else ""
        )
        if sub:
            if sub.startswith("/") or ".." in Path(sub).parts:
                raise ContainerConfigError(
                    f"{at}.subPath: must be a relative path inside the volume, not {sub!r}"
                )
            source = source / sub
            if not source.exists():
                source.mkdir(parents=True)  # the kubelet creates a missing subPath directory
        mounts.append(
            Mount(
                source=str(source),
                target=target,
                read_only=read_only,
                host_to_container=vm.get("mountPropagation")
                in ("HostToContainer", "Bidirectional"),
            )
        )
    return mounts


FILE_VOLUMES = ("configMap", "secret", "projected", "downwardAPI")


def _write_files(directory: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    """A volume's files, written afresh (the kubelet's atomic writer, simplified)."""
    directory.mkdir(parents=True, exist_ok=True)
    for rel, (data, mode) in files.items():
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise ContainerConfigError(f"volume file path {rel!r} must be relative, inside it")
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(mode)
        tmp.replace(path)
    return directory


def _host_path(
    vol: dict[str, Any], *, lab_root: Path, where: str, node_root: Path | None = None
) -> Path:
    spec = vol["hostPath"] or {}
    path, kind = Path(str(spec.get("path") or "")), str(spec.get("type") or "")
    if not path.is_absolute():
        raise ContainerConfigError(f"{where}.hostPath.path: must be absolute, not {str(path)!r}")
    path = node_host_path(path, node_root=node_root, lab_root=lab_root)
    if kind not in HOSTPATH_TYPES:
        raise ContainerConfigError(f"{where}.hostPath.type: unknown type {kind!r}")
    if kind in ("DirectoryOrCreate", "FileOrCreate") and not path.exists():
        # Only inside the lab's own directory: `lab down` must leave nothing behind.
        if lab_root not in path.parents:
            raise ContainerConfigError(
                f"{where}.hostPath: {path} does not exist and the lab creates host paths only "
                f"under {lab_root}"
            )
        if kind == "DirectoryOrCreate":
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    checks = {
        "Directory": path.is_dir,
        "File": path.is_file,
        "Socket": path.is_socket,
        "CharDevice": path.is_char_device,
        "BlockDevice": path.is_block_device,
        "DirectoryOrCreate": path.is_dir,
        "FileOrCreate": path.is_file,
        "": path.exists,
    }
    if not checks[kind]():
        raise ContainerConfigError(
            f"{where}.hostPath: {path} is not {'there' if not kind else 'a ' + kind}"
        )
    return path


def container_spec(
    pod: dict[str, Any],
    container: dict[str, Any],
    *,
    env: dict[str, str],
    volume_dir: Path,
    lab_root: Path,
    node_root: Path | None = None,
    volume_files: VolumeFiles | None = None,
) -> dict[str, Any]:
    """The JSON spec container_init.py's `run` takes."""
    where = (
        f"{pod['metadata']['namespace']}/{pod['metadata']['name']} container {container['name']}"
    )
    stop = (container.get("lifecycle") or {}).get("stopSignal")
    if stop is not None and not (isinstance(stop, str) and stop in signal.Signals.__members__):
        raise ContainerConfigError(
            f"{where}: lifecycle.stopSignal {stop!r} is not a signal name (such as SIGTERM)"
        )
    security = container.get("securityContext") or {}
    uid = int(_security(pod, container, "runAsUser") or 0)
    gid = int(_security(pod, container, "runAsGroup") or 0)
    if _security(pod, container, "runAsNonRoot") and uid == 0:
        raise ContainerConfigError(
            f"{where}: runAsNonRoot is set but the container would run as root (set runAsUser)"
        )
    pod_security = pod["spec"].get("securityContext") or {}
    groups = sorted(
        {int(g) for g in pod_security.get("supplementalGroups") or []}
        | ({int(pod_security["fsGroup"])} if "fsGroup" in pod_security else set())
    )
    privileged = bool(security.get("privileged"))
    hidden = [{"path": p, "mode": m} for p, m in HIDDEN]
    run_root = lab_root.parent  # every lab's state, not only this one's
    if not _under_hidden(run_root):
        hidden.append({"path": str(run_root), "mode": "755"})
    # The "image": the lab's containers run the host's Python and this checkout's venv and code;
    # where one of them lies under a hidden path (pyenv in /root, a CI clone in /tmp), it comes
    # back read-only.
    image = [
        Mount(source=str(p), target=str(p), read_only=True, host_to_container=False)
        for p in sorted({Path(x).resolve() for x in IMAGE_PATHS})
        if _under_hidden(p)
    ]
    return {
        "hide": hidden,
        # The image's paths last: a volume on /tmp (an emptyDir) must not hide a checkout or a
        # venv under /tmp, as it would have hidden a CI clone's (install-cni found no module).
        "mounts": [
            m.as_dict()
            for m in volume_mounts(
                pod,
                container,
                env=env,
                volume_dir=volume_dir,
                lab_root=lab_root,
                where=where,
                node_root=node_root,
                volume_files=volume_files,
            )
        ]
        + [m.as_dict() for m in image],
        "readOnlyRoot": bool(security.get("readOnlyRootFilesystem")),
        "privileged": privileged,
        "caps": capabilities(security, where=where),
        "uid": uid,
        "gid": gid,
        "groups": groups,
        "noNewPrivs": security.get("allowPrivilegeEscalation") is False and not privileged,
        "workingDir": str(container.get("workingDir") or "/"),
    }
