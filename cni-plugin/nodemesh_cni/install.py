"""install-cni: append nodemesh-cni to the node's primary CNI config and copy the executable.

    python3 -m nodemesh_cni.install install   --conf-dir /etc/cni/net.d --bin-dir /opt/cni/bin
    python3 -m nodemesh_cni.install watch     (install, then re-append whenever the primary
                                               CNI rewrites its file; SIGTERM ends it, and
                                               with --daemonset uninstalls if that is going)
    python3 -m nodemesh_cni.install uninstall (have the agent un-mesh running pods, restore the
                                               primary's file, remove the executable)

The primary config is the first *.conf, *.conflist or *.json in the conf dir by name, the one
kubelet's runtime uses. What the primary CNI wrote is kept in <conf dir>/.nodemesh-install/
(a directory, which runtimes skip) so uninstall can put the exact bytes back.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nodemesh_cni import conflist, owner
from nodemesh_cni.conflist import CONFIG_EXTENSIONS, ConfigError
from nodemesh_cni.runfiles import MESHED_FILE, UNINSTALL_FLAG, raise_uninstall_flag

log = logging.getLogger("nodemesh.install-cni")

STATE_DIR = ".nodemesh-install"
STATE_FILE = "state.json"
BINARY_NAME = "nodemesh-cni"


class InstallError(Exception):
    """install-cni cannot do its job; the message says which file and why."""


class InstallResult:
    """What one install pass did: the patched file and whether it had to be (re)written."""

    __slots__ = ("path", "changed")

    def __init__(self, *, path: Path, changed: bool) -> None:
        self.path = path
        self.changed = changed

    def __repr__(self) -> str:
        return f"InstallResult(path={self.path!r}, changed={self.changed!r})"


# --- files ------------------------------------------------------------------------------------


def write_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` via a temp file in the same directory and rename(2).

    The temp name ends in .tmp, an extension runtimes ignore, so they never load a partial file.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def config_files(conf_dir: Path) -> list[Path]:
    """The CNI config files of `conf_dir` in the order runtimes consider them (by name)."""
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError as exc:
        raise InstallError(f"CNI conf dir {conf_dir} does not exist") from exc
    return [
        conf_dir / n for n in names if n.endswith(CONFIG_EXTENSIONS) and (conf_dir / n).is_file()
    ]


def find_primary(conf_dir: Path) -> Path:
    """The config file the runtime uses: the first by name."""
    files = config_files(conf_dir)
    if not files:
        raise InstallError(
            f"no CNI config (*.conf, *.conflist, *.json) in {conf_dir}: "
            "is the primary CNI installed on this node yet?"
        )
    return files[0]


def read_config(path: Path) -> tuple[bytes, dict[str, object]]:
    data = path.read_bytes()
    try:
        return data, conflist.parse(data, source=str(path))
    except ConfigError as exc:
        raise InstallError(str(exc)) from exc


# --- state: what the primary CNI wrote --------------------------------------------------------


def _state_path(conf_dir: Path) -> Path:
    return conf_dir / STATE_DIR / STATE_FILE


def _load_state(conf_dir: Path) -> dict[str, str] | None:
    try:
        state = json.loads(_state_path(conf_dir).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        log.warning("ignoring unreadable %s", _state_path(conf_dir))
        return None
    return state if isinstance(state, dict) else None


def _save_state(conf_dir: Path, state: dict[str, str]) -> None:
    (conf_dir / STATE_DIR).mkdir(mode=0o700, exist_ok=True)
    write_atomically(_state_path(conf_dir), json.dumps(state, indent=2).encode(), mode=0o600)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- install / uninstall ----------------------------------------------------------------------


def install_config(conf_dir: Path, *, entry: dict[str, object]) -> InstallResult:
    """Append `entry` to the primary config; a no-op (no write at all) when it is already there.

    A single .conf becomes a .conflist (written first, the .conf removed after the rename).
    """
    conf_dir = Path(conf_dir)
    primary = find_primary(conf_dir)
    data, doc = read_config(primary)
    desired = conflist.render(conflist.with_plugin(doc, entry=entry))
    state = _load_state(conf_dir)
    if conflist.has_plugin(doc):
        if desired == data:
            return InstallResult(path=primary, changed=False)
        # Our entry is there but stale (new settings) or not last: rewrite, keep the original.
        write_atomically(primary, desired)
        if state is not None and state.get("file") == primary.name:
            _save_state(conf_dir, {**state, "written_sha256": _sha256(desired)})
        log.info("updated the nodemesh-cni entry in %s", primary)
        return InstallResult(path=primary, changed=True)

    # The file is as the primary CNI wrote it (first install, or it rewrote the file since).
    if state is not None and state.get("original_file") not in (None, primary.name):
        _restore_previous(conf_dir, state, new_primary=primary)
    target = primary if conflist.is_list(data) else primary.with_suffix(".conflist")
    if target != primary and target.exists() and (state or {}).get("file") != target.name:
        raise InstallError(
            f"{primary} is a single conf but {target} exists and was not written by nodemesh"
        )
    # Record the original before touching anything, so uninstall can always restore it.
    _save_state(
        conf_dir,
        {
            "file": target.name,
            "original_file": primary.name,
            "original": data.decode("utf-8"),
            "written_sha256": _sha256(desired),
        },
    )
    write_atomically(target, desired)
    if target != primary:
        primary.unlink()
    log.info("appended nodemesh-cni to %s", target)
    return InstallResult(path=target, changed=True)


def _restore_previous(conf_dir: Path, state: dict[str, str], *, new_primary: Path) -> None:
    """The primary moved to another file: give the old one back what its CNI wrote."""
    old = conf_dir / state["file"]
    if old.exists() and old != new_primary:
        _unpatch(conf_dir, state)


def _unpatch(conf_dir: Path, state: dict[str, str]) -> None:
    path = conf_dir / state["file"]
    try:
        current = path.read_bytes()
    except FileNotFoundError:
        return
    original_path = conf_dir / state["original_file"]
    if _sha256(current) == state.get("written_sha256"):
        # Untouched since we wrote it: the primary CNI's exact bytes go back.
        write_atomically(original_path, state["original"].encode("utf-8"))
        if original_path != path:
            path.unlink()
        log.info("restored %s", original_path)
        return
    _strip(path)


def _strip(path: Path) -> None:
    """Remove nodemesh entries from a file changed by someone else, keeping their changes."""
    try:
        data, doc = read_config(path)
    except InstallError as exc:
        log.warning("leaving %s alone: %s", path, exc)
        return
    if conflist.has_plugin(doc):
        write_atomically(path, conflist.render(conflist.without_plugin(doc)))
        log.info("removed nodemesh-cni from %s", path)


@contextlib.contextmanager
def conf_dir_lock(conf_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the CNI conf dir itself (flock on the directory: no file is
    left behind). Adding the entry (binary first) and removing it (entry first, then the
    binary) each happen under it, so a watch beside an `uninstall` cannot check the binary,
    lose it to the uninstall and then write the entry back without it. No lock when the
    directory is not there (the caller reports that)."""
    try:
        fd = os.open(conf_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def uninstall_config(conf_dir: Path) -> None:
    """Undo install_config: the primary's own file back, no nodemesh entry anywhere, no state."""
    conf_dir = Path(conf_dir)
    if not conf_dir.is_dir():
        raise InstallError(f"CNI conf dir {conf_dir} does not exist")
    state = _load_state(conf_dir)
    if state is None and not any(_mentions_plugin(p) for p in config_files(conf_dir)):
        log.warning("no nodemesh-cni entry or install state in %s: nothing to restore", conf_dir)
    if state is not None:
        _unpatch(conf_dir, state)
    if conf_dir.is_dir():
        for path in config_files(conf_dir):
            _strip(path)
    shutil.rmtree(conf_dir / STATE_DIR, ignore_errors=True)


def _mentions_plugin(path: Path) -> bool:
    try:
        return conflist.has_plugin(read_config(path)[1])
    except (InstallError, OSError):
        return False


def install_binary(source: Path | bytes, *, bin_dir: Path, name: str = BINARY_NAME) -> bool:
    """Copy the plugin executable into the CNI bin dir atomically; False when already identical."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    target = Path(bin_dir) / name
    try:
        if target.read_bytes() == data and os.access(target, os.X_OK):
            return False
    except FileNotFoundError:
        pass
    write_atomically(target, data, mode=0o755)
    log.info("installed %s", target)
    return True


def uninstall_binary(*, bin_dir: Path, name: str = BINARY_NAME) -> None:
    try:
        (Path(bin_dir) / name).unlink()
    except FileNotFoundError:
        return
    log.info("removed %s", Path(bin_dir) / name)


# --- leaving the node -------------------------------------------------------------------------

AGENT_STATE_FILE = "agent-state.json"
AGENT_PRIVATE_DIR = "agent-private"


def leave_node(
    *, conf_dir: Path, bin_dir: Path, agent_socket: Path, reason: str, agent_wait: float = 20.0
) -> bool:
    """nodemesh leaves this node: the node as it was before install, running pods working.

    An agent answering on `agent_socket` is asked (the uninstall flag in its run dir) to take
    its rules out of every running pod; meanwhile the conflist gets the primary's own bytes back
    (entry first), then the executable goes, then what nodemesh kept in the run dir. Returns
    whether an agent confirmed that it un-meshed the pods; without one, the pods it had enrolled
    are logged: their traffic stays redirected until they are restarted.
    """
    log.info("removing nodemesh from this node: %s", reason)
    run_dir = Path(agent_socket).parent
    flag = raise_uninstall_flag(run_dir, reason=reason) if _answers(agent_socket) else None
    with conf_dir_lock(conf_dir):
        uninstall_config(conf_dir)
        uninstall_binary(bin_dir=bin_dir)
    confirmed = False
    if flag is not None:
        deadline = time.monotonic() + agent_wait
        while flag.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        confirmed = not flag.exists()
    if confirmed:
        log.info("the agent took its rules out of the running pods")
    else:
        stuck = _enrolled_pods(run_dir / AGENT_STATE_FILE)
        if stuck:
            log.error(
                "no agent un-meshed the running pods (%s); restart these, their traffic is "
                "still redirected to the agent: %s",
                f"none answered within {agent_wait:g}s" if flag else "none running",
                ", ".join(stuck),
            )
    for name in (UNINSTALL_FLAG, MESHED_FILE, AGENT_STATE_FILE):
        try:
            (run_dir / name).unlink()
        except FileNotFoundError:
            pass
    # The agent's saved table, certificates and keys (nodeagent.handover.servingstate), whether or
    # not an agent was there to remove them.
    shutil.rmtree(run_dir / AGENT_PRIVATE_DIR, ignore_errors=True)
    return confirmed


def _answers(socket_path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(socket_path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _enrolled_pods(state_file: Path) -> list[str]:
    try:
        doc = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return []
    pods = doc.get("pods") if isinstance(doc, dict) else None
    return [
        f"{p.get('namespace')}/{p.get('name')}"
        for p in (pods if isinstance(pods, list) else [])
        if isinstance(p, dict) and p.get("meshed")
    ]


# --- watch ------------------------------------------------------------------------------------


class WatchTick:
    """What one watch iteration saw; handed to the `on_iteration` hook."""

    __slots__ = ("iteration", "result", "error")

    def __init__(self, *, iteration: int, result: InstallResult | None, error: str | None):
        self.iteration = iteration
        self.result = result
        self.error = error


def watch(
    conf_dir: Path,
    *,
    entry: dict[str, object],
    interval: float = 1.0,
    on_iteration: Callable[[WatchTick], bool] | None = None,
    ensure_binary: Callable[[], object] | None = None,
) -> None:
    """Keep nodemesh-cni in the primary config: re-append whenever the primary CNI rewrites it.

    `ensure_binary` runs before every (re)append, so an entry is never written while its
    executable is missing (someone ran `uninstall` beside the watch: both come back, binary
    first). Removal goes the other way round: entry first, binary second.

    Polls every `interval` seconds by running install_config, which only reads and compares
    when nothing changed (a stat-based change detector would race with a rewrite landing
    between our write and the stat). `on_iteration` is called after each poll; returning False
    ends the loop (tests, shutdown). Errors (no config yet, a half-written file) are logged once
    and retried on the next poll.
    """
    conf_dir = Path(conf_dir)
    iteration = 0
    last_error: str | None = None
    while True:
        result: InstallResult | None = None
        error: str | None = None
        try:
            with conf_dir_lock(conf_dir):
                if ensure_binary is not None:
                    ensure_binary()
                result = install_config(conf_dir, entry=entry)
        except (InstallError, OSError) as exc:
            error = str(exc)
            if error != last_error:
                log.warning("%s (retrying every %gs)", error, interval)
        last_error = error
        iteration += 1
        if on_iteration is not None and not on_iteration(
            WatchTick(iteration=iteration, result=result, error=error)
        ):
            return
        time.sleep(interval)


# --- command line -----------------------------------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m nodemesh_cni.install", description=__doc__)
    parser.add_argument("action", choices=("install", "uninstall", "watch"))
    parser.add_argument("--conf-dir", type=Path, default=Path("/etc/cni/net.d"))
    parser.add_argument("--bin-dir", type=Path, default=Path("/opt/cni/bin"))
    parser.add_argument(
        "--plugin",
        type=Path,
        help="nodemesh-cni executable to copy (default: build the zipapp from this package)",
    )
    parser.add_argument("--agent-socket", default="/var/run/nodemesh/cni.sock")
    parser.add_argument("--failure-policy", choices=("fail-closed", "fail-open"))
    parser.add_argument(
        "--exclude-namespaces",
        default="kube-system,nodemesh",
        help="comma-separated namespaces nodemesh-cni passes through",
    )
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-file", default="/var/log/nodemesh-cni.log")
    parser.add_argument("--interval", type=float, default=1.0, help="watch poll period (s)")
    parser.add_argument(
        "--cleanup-on-exit",
        action="store_true",
        help="watch: uninstall on SIGTERM whatever the reason (see --daemonset instead)",
    )
    parser.add_argument(
        "--daemonset",
        metavar="NAMESPACE/NAME",
        help="watch: the DaemonSet this runs in; on SIGTERM, uninstall only if it (or its "
        "namespace) is gone or being deleted, asked of the API server (in-cluster credentials)",
    )
    parser.add_argument(
        "--objects-dir",
        type=Path,
        help="with --daemonset: read the DaemonSet from this directory of object files (the "
        "lab's, <dir>/DaemonSet/<ns>/<name>.yaml) instead of the API server",
    )
    parser.add_argument(
        "--owner-recheck",
        type=float,
        default=30.0,
        help="with --daemonset: while the first look at it failed, look again this often (s)",
    )
    parser.add_argument(
        "--agent-wait",
        type=float,
        default=20.0,
        help="uninstall: how long to wait for the agent to un-mesh running pods (s)",
    )
    return parser.parse_args(argv)


def _owner(args: argparse.Namespace) -> owner.KubernetesOwner | owner.LocalOwner | None:
    if args.daemonset is None:
        return None
    namespace, name = owner.parse_daemonset(args.daemonset)
    if args.objects_dir is not None:
        return owner.LocalOwner(namespace, name, objects_dir=args.objects_dir)
    return owner.KubernetesOwner.in_cluster(namespace, name)


def _plugin_bytes(args: argparse.Namespace) -> bytes:
    """The executable to install: --plugin, or the zipapp built from this package (once)."""
    if args.plugin is not None:
        return Path(args.plugin).read_bytes()
    from nodemesh_cni.bundle import build_zipapp

    with tempfile.TemporaryDirectory(prefix="nodemesh-cni-") as tmp:
        return build_zipapp(Path(tmp) / BINARY_NAME).read_bytes()


def _check_owner_access(
    owned_by: owner.KubernetesOwner | owner.LocalOwner, ds: str, *, again: float
) -> None:
    checked = owned_by.check_access()
    if checked.known:
        log.info("uninstall on SIGTERM if %s is gone: %s", ds, checked.reason)
    else:
        log.error(
            "cannot tell an uninstall from a restart yet (%s): until then nodemesh-cni stays "
            "on SIGTERM; asking again every %gs",
            checked.reason,
            again,
        )


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    entry = conflist.plugin_entry(
        agent_socket=args.agent_socket,
        failure_policy=args.failure_policy or "fail-closed",
        exclude_namespaces=tuple(n for n in args.exclude_namespaces.split(",") if n),
        log_level=args.log_level,
        log_file=args.log_file,
    )

    def leave(reason: str) -> None:
        leave_node(
            conf_dir=args.conf_dir,
            bin_dir=args.bin_dir,
            agent_socket=Path(args.agent_socket),
            reason=reason,
            agent_wait=args.agent_wait,
        )

    try:
        if args.action == "uninstall":
            leave("python3 -m nodemesh_cni.install uninstall")
            return 0
        stopping: list[bool] = []
        if args.action == "watch":
            signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
            signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
        owned_by = _owner(args) if args.action == "watch" else None
        if owned_by is not None:
            _check_owner_access(owned_by, args.daemonset, again=args.owner_recheck)
        plugin = _plugin_bytes(args)
        with conf_dir_lock(args.conf_dir):
            install_binary(plugin, bin_dir=args.bin_dir)  # binary first, entry second
            if args.action == "install":
                install_config(args.conf_dir, entry=entry)
                return 0
        recheck = [time.monotonic() + args.owner_recheck]

        def go_on(_tick: WatchTick) -> bool:
            # Access that failed at start-up (API server not up yet) is asked again now and then:
            # without it a later uninstall could not be told from a restart.
            if owned_by is not None and not owned_by.access_checked and not stopping:
                if time.monotonic() >= recheck[0]:
                    recheck[0] = time.monotonic() + args.owner_recheck
                    _check_owner_access(owned_by, args.daemonset, again=args.owner_recheck)
            return not stopping

        watch(
            args.conf_dir,
            entry=entry,
            interval=args.interval,
            on_iteration=go_on,
            ensure_binary=lambda: install_binary(plugin, bin_dir=args.bin_dir),
        )
        if args.cleanup_on_exit:
            leave("--cleanup-on-exit")
        elif owned_by is not None:
            verdict = owned_by.verdict()
            if verdict.leaving:
                leave(verdict.reason)
            else:
                log.log(
                    logging.INFO if verdict.known else logging.WARNING,
                    "stopping; nodemesh-cni stays on this node: %s",
                    verdict.reason,
                )
        return 0
    except (InstallError, owner.OwnerError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
