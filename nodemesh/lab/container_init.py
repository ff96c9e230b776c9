"""Start (or enter) a lab container the way runc would: run as a script, stdlib only.

    python3 -I -S container_init.py run SPEC_JSON ARGV...   (inside `ip netns exec POD_NETNS`)
    python3 -I -S container_init.py enter PID ARGV...       (`nodemesh lab exec`)

`run` sets up the container's view in the mount namespace `ip netns exec` made (tmpfs over the
host's /run, /tmp, /root, /home, /etc/netns and the lab's state dir; a minimal /dev; volumes bound
where declared; a read-only root if asked), then forks the entrypoint as PID 1 of a new PID
namespace with its own /proc, the container's user and exactly its capabilities. This process
stays as the entrypoint's parent (the runtime's shim): it forwards signals to it and exits with
its status; if this process is killed, the entrypoint gets SIGKILL (and with it, everything in
its PID namespace). `enter` joins a running container's network, mount and PID namespaces and
takes its user, capability bounding set and no_new_privs before running ARGV.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import sys
import warnings  # noqa: F401 - os.execvpe imports it, maybe after the user has changed
from collections.abc import Callable

CLONE_NEWNS, CLONE_NEWPID = 0x00020000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC = 32, 4096, 8192, 16384
MS_PRIVATE, MS_SLAVE = 1 << 18, 1 << 19
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 1, 24, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SYS_MOUNT_SETATTR = 442  # x86_64 and aarch64 alike (the new syscall table is shared)
AT_RECURSIVE, MOUNT_ATTR_RDONLY = 0x8000, 1
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
# runc's masked and read-only /proc paths for a container that is not privileged.
PROC_MASKED = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/acpi",
    "/proc/scsi",
)
PROC_READONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
DEVICES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}

libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def mount(
    source: str, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(
        libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def read_only(target: str | int, *, recursive: bool, on: bool = True) -> None:
    """Make the mount at a path (the topmost one there) or the one an O_PATH fd holds
    read-only (or, with on=False, writable again)."""
    attr = _MountAttr(attr_set=MOUNT_ATTR_RDONLY) if on else _MountAttr(attr_clr=MOUNT_ATTR_RDONLY)
    flags = AT_RECURSIVE if recursive else 0
    if isinstance(target, int):
        dfd, path, flags = target, b"", flags | AT_EMPTY_PATH
    else:
        dfd, path = AT_FDCWD, target.encode()
    _check(
        libc.syscall(SYS_MOUNT_SETATTR, dfd, path, flags, ctypes.byref(attr), ctypes.sizeof(attr)),
        f"read-only {target}",
    )


def prctl(option: int, arg: int, arg3: int = 0) -> None:
    _check(libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg3), 0, 0), f"prctl {option}")


def _tmpfs(path: str, mode: str) -> None:
    mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}")


def _minimal_dev() -> None:
    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name, (major, minor) in DEVICES.items():
        os.mknod(f"/dev/{name}", 0o666 | 0o020000, os.makedev(major, minor))
        os.chmod(f"/dev/{name}", 0o666)
    os.mkdir("/dev/pts")
    mount(
        "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"
    )
    os.symlink("pts/ptmx", "/dev/ptmx")
    os.mkdir("/dev/shm")
    _tmpfs("/dev/shm", "1777")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"/dev/{name}")
    os.symlink("/proc/self/fd", "/dev/fd")


def _make_target(target: str, *, is_dir: bool, writable_roots: list[str]) -> None:
    if os.path.exists(target):
        return
    target = os.path.realpath(target)  # /var/run/x is /run/x
    # Only inside what this container mounted itself: never leave a directory on the host.
    if not any(target == r or target.startswith(r.rstrip("/") + "/") for r in writable_roots):
        raise OSError(
            2,
            f"mountPath {target} does not exist on this machine, and the lab "
            f"creates mount points only under {', '.join(writable_roots)}",
        )
    os.makedirs(target if is_dir else os.path.dirname(target), exist_ok=True)
    if not is_dir:
        open(target, "a").close()


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _missing_outside(spec: dict) -> list[tuple[str, bool]]:
    """Mount points the container declares that the host does not have and that lie outside
    the paths the container hides (where the lab could make them): (path, is_dir) each."""
    hidden = [h["path"] for h in spec["hide"]]
    out = []
    for m in spec["mounts"]:
        target = m["target"]
        if not os.path.exists(target) and not _under(os.path.realpath(target), hidden):
            out.append((target, os.path.isdir(m["source"])))
    return out


def _top_mounts() -> list[str]:
    """Mount points of the mounts right under this namespace's root mount (/proc, /sys, /dev,
    the /etc/hosts binds of `ip netns exec` ...), in mount order."""
    with open("/proc/self/mountinfo") as f:
        return top_mounts(f.read())


def top_mounts(mountinfo: str) -> list[str]:
    """The visible mounts right under the root mount, in mount order. A mount that a later one
    at the same place or above it covers is left out: it cannot be opened by its path (where
    /run is no mount of its own, a test worker's tmpfs on /run covers the host's labs' mounts
    under /run, which its copy of the host's mounts still lists)."""
    entries = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")
        entries.append((fields[0], fields[1], point))
    root = [mid for mid, _, point in entries if point == "/"][-1]
    tops: list[str] = []
    for mid, parent, point in entries:
        if parent != root or mid == root:
            continue
        above = point.rstrip("/") + "/"
        tops = [p for p in tops if p != point and not p.startswith(above)]
        tops.append(point)
    return tops


def overlay_root(make: list[tuple[str, bool]]) -> None:
    """The image's own copy of the root: an overlay of the host's root filesystem with a
    throw-away upper layer, so mount points the image would have (/host/..., /etc/<app>) can be
    made in it as runc makes them in an image, and never on the host. The host's other mounts
    (/proc, /sys, /dev, the netns' /etc binds, /run/netns ...) are bound back in it."""
    tops = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in _top_mounts()]
    stage = "/run"  # hidden from the container anyway
    _tmpfs(stage, "700")
    for d in ("upper", "work", "root"):
        os.mkdir(f"{stage}/{d}")
    new = f"{stage}/root"
    mount("overlay", new, "overlay", 0,
          f"lowerdir=/,upperdir={stage}/upper,workdir={stage}/work")  # fmt: skip
    for point, fd in tops:
        target = new + point
        if not os.path.lexists(target):
            is_dir = os.path.isdir(f"/proc/self/fd/{fd}")
            os.makedirs(target if is_dir else os.path.dirname(target), exist_ok=True)
            if not is_dir:
                open(target, "a").close()
        mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        os.close(fd)
    for path, is_dir in make:
        target = new + path
        os.makedirs(target if is_dir else os.path.dirname(target), exist_ok=True)
        if not is_dir:
            open(target, "a").close()
    os.chdir(new)
    mount(".", "/", None, MS_MOVE)
    _check(libc.chroot(b"."), "chroot")
    os.chdir("/")


def setup_view(spec: dict) -> None:
    """Everything that happens in the mount namespace before the entrypoint's PID namespace."""
    make = _missing_outside(spec)
    # Open volume sources first: the tmpfs mounts below may hide them.
    sources = [os.open(m["source"], os.O_PATH | os.O_CLOEXEC) for m in spec["mounts"]]
    if make:
        overlay_root(make)
    if spec["readOnlyRoot"]:
        read_only("/", recursive=True)
    hidden, hidden_fds = [], []
    for hide in spec["hide"]:
        path = hide["path"]
        if os.path.isdir(path) and not os.path.islink(path):
            _tmpfs(path, hide["mode"])
            hidden.append(path)
            # This very mount, whatever volumes are mounted over it later.
            hidden_fds.append(os.open(path, os.O_PATH | os.O_CLOEXEC))
    if not spec["privileged"]:
        _minimal_dev()
        read_only("/sys", recursive=True)
    for m, fd in zip(spec["mounts"], sources, strict=True):
        target = m["target"]
        _make_target(target, is_dir=os.path.isdir(f"/proc/self/fd/{fd}"), writable_roots=hidden)
        mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        os.close(fd)
        mount("none", target, None, MS_REC | (MS_SLAVE if m["hostToContainer"] else MS_PRIVATE))
        # A bind copies the flags of the mount it comes from, read-only root included.
        read_only(target, recursive=True, on=m["readOnly"])
    for fd in hidden_fds:
        if spec["readOnlyRoot"]:
            read_only(fd, recursive=False)
        os.close(fd)


def setup_proc(*, privileged: bool) -> None:
    """In the new PID namespace: a /proc that shows it alone, with runc's masks."""
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if privileged:
        return
    for path in PROC_MASKED:
        if os.path.isdir(path):
            mount("tmpfs", path, "tmpfs", MS_RDONLY, "size=0")
        elif os.path.exists(path):
            mount("/dev/null", path, None, MS_BIND)
    for path in PROC_READONLY:
        if os.path.exists(path):
            mount(path, path, None, MS_BIND | MS_REC)
            read_only(path, recursive=True)


def drop_privileges(
    *, caps: list[int], uid: int, gid: int, groups: list[int], no_new_privs: bool
) -> None:
    """Leave exactly `caps` (as the bounding set: root gets them all at exec, anyone else only
    through file capabilities, as in a container), the user and groups, and no_new_privs."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    for cap in range(last + 1):
        if cap not in caps:
            prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    # No inheritable capabilities: they would survive exec outside the bounding set.
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capget(ctypes.byref(header), data), "capget")
    for i in (0, 1):
        data[i].inheritable = 0
    _check(libc.capset(ctypes.byref(header), data), "capset")
    os.setresuid(uid, uid, uid)
    if no_new_privs:
        prctl(PR_SET_NO_NEW_PRIVS, 1)


def _exec(argv: list[str], parent_gone: int) -> None:
    """The last steps of the child: die with the parent, then become the entrypoint."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # again: a change of user clears it
    if select.select([parent_gone], [], [], 0)[0]:
        os._exit(137)  # the parent is already gone: EOF on the pipe only it held open
    os.close(parent_gone)
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        os.execvpe(argv[0], argv, os.environ)
    except OSError as e:
        sys.stderr.write(f"container: cannot run {argv[0]!r}: {e.strerror}\n")
        os._exit(127 if isinstance(e, FileNotFoundError) else 126)


def _supervise(child: int) -> None:
    """Forward signals to the entrypoint until it exits; exit as it did."""

    def forward(sig: int, _frame: object) -> None:
        try:
            os.kill(child, sig)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        died_of = os.WTERMSIG(status)
        signal.signal(died_of, signal.SIG_DFL)
        os.kill(os.getpid(), died_of)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _fork_and_supervise(child_setup: Callable[[], None], argv: list[str]) -> None:
    """Fork the entrypoint (into the PID namespace unshared or joined before), set it up, run
    it; stay as its parent."""
    parent_gone, alive = os.pipe2(os.O_CLOEXEC)
    # Signals that arrive before _supervise installs its handlers must not kill us silently.
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_IGN)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(alive)
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            child_setup()
            _exec(argv, parent_gone)
        except BaseException as e:  # noqa: BLE001 - report, never return into the parent's code
            sys.stderr.write(f"container: {e}\n")
            os._exit(128)
    os.close(parent_gone)
    _supervise(pid)


def run(spec: dict, argv: list[str]) -> None:
    setup_view(spec)

    def child() -> None:
        os.setsid()
        setup_proc(privileged=spec["privileged"])
        os.chdir(spec["workingDir"])
        drop_privileges(
            caps=spec["caps"],
            uid=spec["uid"],
            gid=spec["gid"],
            groups=spec["groups"],
            no_new_privs=spec["noNewPrivs"],
        )

    _check(libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
    _fork_and_supervise(child, argv)


def _status_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def enter(pid: int, argv: list[str]) -> None:
    status = _status_of(pid)
    bounding = int(status["CapBnd"], 16)
    caps = [c for c in range(64) if bounding >> c & 1]
    uid, gid = int(status["Uid"].split()[0]), int(status["Gid"].split()[0])
    groups = [int(g) for g in status.get("Groups", "").split()]
    no_new_privs = status.get("NoNewPrivs", "0").strip() == "1"
    cwd = os.readlink(f"/proc/{pid}/cwd")
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(
            item.decode(errors="replace").split("=", 1)
            for item in f.read().split(b"\0")
            if b"=" in item
        )
    fds = [
        os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in ("net", "pid", "mnt")
    ]
    for fd in fds:
        _check(libc.setns(fd, 0), "setns")
        os.close(fd)
    os.environ.clear()
    os.environ.update(env)

    def child() -> None:
        os.chdir(cwd)
        drop_privileges(caps=caps, uid=uid, gid=gid, groups=groups, no_new_privs=no_new_privs)

    # setns(CLONE_NEWPID) puts our children in the container's PID namespace, not us: fork.
    _fork_and_supervise(child, argv)


def main() -> None:
    mode, what, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    try:
        if mode == "run":
            run(json.loads(what), argv)
        elif mode == "enter":
            enter(int(what), argv)
        else:
            raise SystemExit(f"container: unknown mode {mode!r}")
    except OSError as e:
        sys.stderr.write(f"container: {e}\n")
        os._exit(128)


if __name__ == "__main__":
    main()
