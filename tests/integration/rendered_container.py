"""Run a command the way a kubelet + runc would run a rendered container, in the ways the agent
depends on: a private mount namespace whose root filesystem is read-only when the container's
securityContext says so (and /run starts empty, as in an image), with exactly the declared
volumes mounted at their mountPaths (hostPath volumes from directories or files the test
provides, emptyDirs as tmpfs), and only the declared capabilities in the bounding set.

`container_command(pod_spec, "agent", host_paths={...}, argv=[...])` gives a command line to run
as root (util-linux `unshare`, `mount` and `setpriv`). Everything it mounts lives in the new mount
namespace and disappears with it; nothing on the host is written."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Obj = dict[str, Any]


def _cap_list(container: Obj) -> str:
    caps = container.get("securityContext", {}).get("capabilities", {})
    drop = {c.upper() for c in caps.get("drop", [])}
    if "ALL" not in drop:
        raise ValueError(f"container {container['name']}: only drop: [ALL] + add is modelled")
    return ",".join(["-all", *(f"+{c.lower()}" for c in caps.get("add", []))])


def container_command(
    pod_spec: Obj,
    name: str,
    *,
    host_paths: Mapping[str, Path],
    scratch: Path,
    argv: Sequence[str],
    keep_visible: Sequence[Path] = (),
) -> list[str]:
    """`host_paths` maps each hostPath volume's path to what stands in for it on this machine.
    `keep_visible`: host paths the command needs (the interpreter, the checkout) that an
    emptyDir would hide (a CI clone under /tmp): bound back read-only, as an image holds them."""
    containers = [*pod_spec.get("initContainers", []), *pod_spec["containers"]]
    container = next(c for c in containers if c["name"] == name)
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    q = shlex.quote
    keep = scratch / "host-run"  # the host's /run, reachable after /run is covered
    keep.mkdir(parents=True, exist_ok=True)
    steps = [f"mount --rbind /run {q(str(keep))}", "mount -t tmpfs -o mode=755 tmpfs /run"]
    binds: list[str] = []
    # emptyDirs last: a tmpfs on /tmp would hide the stand-ins the test keeps under /tmp.
    empty_dirs: list[str] = []
    empty_targets: list[str] = []
    for mount in container.get("volumeMounts", []):
        target = mount["mountPath"]
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            steps.append(f"mkdir -p {q(target)}")
            empty_dirs.append(f"mount -t tmpfs tmpfs {q(target)}")
            empty_targets.append(target)
            continue
        if "hostPath" in volume:
            source = Path(host_paths[volume["hostPath"]["path"]])
        else:  # configMap, secret, projected: the test gives their files as a directory
            source = Path(host_paths[mount["name"]])
        is_dir = source.is_dir()
        if str(source).startswith("/run/"):
            source = keep / str(source)[len("/run/") :]
        if is_dir:
            steps.append(f"mkdir -p {q(target)}")
        else:
            steps.append(f"mkdir -p {q(str(Path(target).parent))} && touch {q(target)}")
        ro = ",ro" if mount.get("readOnly") else ""
        binds.append(f"mount --rbind {q(str(source))} {q(target)}")
        if ro:
            binds.append(f"mount -o remount,bind,ro {q(target)}")
    # What an emptyDir would hide but the command needs: saved under /run before it is covered.
    restore: list[str] = []
    for i, target in enumerate(empty_targets):
        under = [p for p in keep_visible if str(p).startswith(target.rstrip("/") + "/")]
        if not under:
            continue
        saved = f"/run/.nodemesh-hidden-{i}"
        steps += [f"mkdir -p {saved}", f"mount --rbind {q(target)} {saved}"]
        for p in under:
            rel = str(p)[len(target.rstrip("/")) + 1 :]
            restore += [
                f"mkdir -p {q(str(p))}",
                f"mount --rbind {saved}/{q(rel)} {q(str(p))}",
                f"mount -o remount,bind,ro {q(str(p))}",
            ]
    read_only = container.get("securityContext", {}).get("readOnlyRootFilesystem", False)
    if read_only:
        # The image's whole tree is read-only, also where this machine has a separate mount
        # (an isolated test worker's overlay on /etc and its /etc/netns).
        image_mounts = (
            "findmnt -rn -o TARGET | grep -E '^/(etc|usr|var|opt|srv|home|root)(/|$)' | sort -u"
            ' | while read -r m; do mount -o remount,bind,ro "$m"; done'
        )
        steps += ["mount -o remount,ro /run", "mount -o remount,bind,ro /", image_mounts]
    steps += binds + empty_dirs + restore
    steps.append(
        "exec setpriv --bounding-set " + _cap_list(container) + " -- "
        + " ".join(q(a) for a in argv)
    )  # fmt: skip
    return ["unshare", "--mount", "--propagation", "private", "sh", "-ec", "; ".join(steps)]
