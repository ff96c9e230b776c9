"""Lab containers are isolated as a kubelet + runc would run them: a pod cannot read the agents'
bootstrap tokens, the CA issuer key, another pod's files or processes, or the lab's state dir;
it has the runtime's default capabilities (no NET_ADMIN: setting the agent's SO_MARK fails);
declared volumes, runAsUser and readOnlyRootFilesystem hold; and the mesh still works: the agent
(with exactly NET_ADMIN, NET_RAW, SYS_ADMIN) enrols emojivoto and vote-bot's counters move."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodemesh.lab.paths import LabPaths
from nodemesh.lab.procs import processes_in
from tests.integration.labkit import DEMO, NODEMESH, lab_up, nm

pytestmark = [pytest.mark.root, pytest.mark.lab]

CAPS = {"NET_ADMIN": 12, "NET_RAW": 13, "SYS_ADMIN": 21}
# containerd's default set: what a container gets when its manifest adds and drops nothing.
DEFAULT_CAPS = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13, "SYS_CHROOT": 18,
    "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31,
}  # fmt: skip

# Run inside a pod: try what a hostile app would, print what happened to each attempt.
PROBE = r"""
import json, os, socket, sys
lab, other_pids, other_netns = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
out = {}
def attempt(key, fn):
    try:
        out[key] = "ok: " + repr(fn())[:80]
    except OSError as e:
        out[key] = "denied: " + type(e).__name__
root = "/run/nodemesh/" + lab
attempt("tokens", lambda: open(root + "/identity/tokens.json").read())
attempt("issuer_key", lambda: open(root + "/identity/issuer.key").read())
attempt("state_dir", lambda: os.listdir(root))
attempt("objects", lambda: os.listdir(root + "/objects"))
attempt("other_pod_log_dir", lambda: os.listdir(root + "/logs/emojivoto"))
attempt("other_pod_hosts", lambda: open("/etc/netns/" + other_netns + "/hosts").read())
for pid in other_pids:
    attempt("proc_environ_" + str(pid), lambda: open("/proc/%d/environ" % pid, "rb").read())
    attempt("proc_root_" + str(pid), lambda: os.listdir("/proc/%d/root/" % pid))
out["visible_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
s = socket.socket()
attempt("so_mark", lambda: s.setsockopt(socket.SOL_SOCKET, 36, 0x6E6D))
out["so_mark_errno"] = None
try:
    s.setsockopt(socket.SOL_SOCKET, 36, 0x6E6D)
except OSError as e:
    out["so_mark_errno"] = e.errno
out["hosts_has_services"] = "web-svc" in open("/etc/hosts").read()
print(json.dumps(out))
"""

# A pod that declares what it needs: a read-only hostPath, an emptyDir for /tmp, a non-root user,
# a read-only root and no capabilities at all.
VOLUMES_POD = """\
apiVersion: v1
kind: Namespace
metadata: {{name: iso}}
---
apiVersion: v1
kind: Pod
metadata: {{name: volumes, namespace: iso}}
spec:
  restartPolicy: Never
  securityContext: {{runAsUser: 1000, runAsGroup: 1000}}
  volumes:
  - {{name: shared, hostPath: {{path: {shared}, type: Directory}}}}
  - {{name: scratch, emptyDir: {{}}}}
  containers:
  - name: main
    command: [python3, -c, {script}]
    securityContext:
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL]}}
    volumeMounts:
    - {{name: shared, mountPath: /run/iso-shared, readOnly: true}}
    - {{name: scratch, mountPath: /tmp}}
  - name: plain
    command: [python3, -c, {plain}]
    securityContext: {{runAsUser: 0, runAsGroup: 0}}
---
# An exec probe runs inside the container, as the kubelet's do: it sees no lab state dir.
apiVersion: v1
kind: Pod
metadata: {{name: prober, namespace: iso}}
spec:
  containers:
  - name: main
    command: [sleep, "3600"]
    readinessProbe:
      exec: {{command: [sh, -c, "test ! -e {lab_root} && test -e /proc/1/cmdline"]}}
      periodSeconds: 1
"""

# A container that declares nothing: the runtime's default capabilities, as root.
PLAIN_SCRIPT = r"""
import json
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
print("PLAIN " + json.dumps({"cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip()}), flush=True)
"""

VOLUMES_SCRIPT = r"""
import json, os
out = {"uid": os.getuid(), "gid": os.getgid()}
def attempt(key, fn):
    try:
        fn()
        out[key] = "ok"
    except OSError as e:
        out[key] = "denied: " + type(e).__name__
attempt("read_shared", lambda: out.__setitem__("shared", open("/run/iso-shared/hello").read()))
attempt("write_shared", lambda: open("/run/iso-shared/x", "w").write("x"))
attempt("write_root", lambda: open("/iso-written", "w").write("x"))
attempt("write_tmp", lambda: open("/tmp/iso-written", "w").write("x"))
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
out["cap_eff"], out["cap_bnd"] = status["CapEff"].strip(), status["CapBnd"].strip()
out["no_new_privs"] = status.get("NoNewPrivs", "").strip()
out["pid"] = os.getpid()
print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.fixture
def lab() -> Iterator[LabPaths]:
    with lab_up("lbz", *DEMO, "--timeout", "400", timeout=480) as paths:
        yield paths


def caps_of(pid: int) -> tuple[int, int, int]:
    """(effective, bounding, uid) of a host PID."""
    status = dict(
        line.split(":\t", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":\t" in line
    )
    return int(status["CapEff"], 16), int(status["CapBnd"], 16), int(status["Uid"].split()[0])


def mask(caps: dict[str, int]) -> int:
    return sum(1 << bit for bit in caps.values())


def host_pids(match: str, paths: LabPaths) -> list[int]:
    """Host PIDs of this lab (in one of its namespaces) whose command line holds `match`: the
    entrypoint only, not the lab's container wrapper, which carries the same argv."""
    pids = []
    for netns in Path("/run/netns").iterdir():
        if not netns.name.startswith(paths.prefix):
            continue
        for pid in processes_in(str(netns)):
            try:
                joined = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if match.encode() in joined and b"container_init" not in joined:
                pids.append(pid)
    return sorted(set(pids))


def logged(paths: LabPaths, container: str, tag: str) -> dict[str, object]:
    """The JSON a container of pod iso/volumes printed after `tag`."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(1)
        res = subprocess.run(
            [NODEMESH, "lab", "logs", "--name", paths.name, "-n", "iso", "-c", container,
             "volumes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        for line in res.stdout.splitlines():
            if line.startswith(tag):  # not the "starting: ..." line that quotes it
                return json.loads(line.split(tag, 1)[1])  # type: ignore[no-any-return]
    raise AssertionError(f"container {container} of iso/volumes printed no {tag!r}")


def bot_stats(paths: LabPaths) -> dict[str, int]:
    out = nm("lab", "exec", "--name", paths.name, "-n", "emojivoto", "deploy/vote-bot", "--",
             "python3", "-c",
             "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8081/stats').read().decode())")  # fmt: skip
    return json.loads(out)  # type: ignore[no-any-return]


def test_pods_cannot_reach_secrets_and_the_mesh_still_works(lab: LabPaths, tmp_path: Path) -> None:
    st = json.loads(nm("lab", "status", "--name", lab.name, "-o", "json"))
    web = next(p for p in st["pods"] if p["name"].startswith("web-"))
    # Processes of other pods and of the agents, by their host PIDs.
    others = host_pids("emojivoto.web", lab) + host_pids("nodemesh-agent", lab)
    assert others, "found no web or agent process on the host"
    out = json.loads(
        nm(
            "lab",
            "exec",
            "--name",
            lab.name,
            "-n",
            "emojivoto",
            "deploy/vote-bot",
            "--",
            "python3",
            "-c",
            PROBE,
            lab.name,
            json.dumps(others),
            lab.pod_netns("emojivoto", web["name"]),
        )  # fmt: skip
    )
    for key in ("tokens", "issuer_key", "state_dir", "objects", "other_pod_log_dir",
                "other_pod_hosts"):  # fmt: skip
        assert out[key].startswith("denied"), (key, out[key])
    for pid in others:
        # Either that PID does not exist in the pod's view, or it is one of the pod's own.
        if out[f"proc_environ_{pid}"].startswith("ok"):
            assert pid in out["visible_pids"] and pid < 100, out
        assert out[f"proc_root_{pid}"].startswith("denied") or pid < 100, out
    assert len(out["visible_pids"]) < 10, out["visible_pids"]  # only this container's
    assert out["so_mark_errno"] == 1, out  # EPERM: no NET_ADMIN in an app pod
    assert out["hosts_has_services"], out

    # What the processes were given: the agent exactly its declared set, an app the default set.
    agents = host_pids("nodemesh-agent --node", lab)  # not install-cni's --daemonset=...agent
    assert agents
    for pid in agents:
        eff, bnd, uid = caps_of(pid)
        assert (eff, bnd, uid) == (mask(CAPS), mask(CAPS), 0), (pid, hex(eff), hex(bnd))
    bots = host_pids("emojivoto.vote_bot", lab)
    assert bots
    for pid in bots:  # emojivoto drops them all
        assert caps_of(pid)[:2] == (0, 0), pid

    # The mesh still works: vote-bot's requests go through the agents and succeed.
    before = bot_stats(lab)
    time.sleep(4)
    after = bot_stats(lab)
    assert after["sent"] > before["sent"] + 5, (before, after)
    assert after["succeeded"] > before["succeeded"], (before, after)

    # Declared volumes, runAsUser, a read-only root and no capabilities.
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    (shared / "hello").write_text("hello from the host")
    (shared / "hello").chmod(0o644)
    manifest = tmp_path / "volumes.yml"
    manifest.write_text(
        VOLUMES_POD.format(
            shared=shared,
            script=json.dumps(VOLUMES_SCRIPT),
            plain=json.dumps(PLAIN_SCRIPT),
            lab_root=lab.root,
        )
    )
    nm("lab", "apply", "--name", lab.name, "-f", str(manifest))
    result, plain = logged(lab, "main", "RESULT "), logged(lab, "plain", "PLAIN ")
    assert int(plain["cap_eff"], 16) == int(plain["cap_bnd"], 16) == mask(DEFAULT_CAPS), plain
    assert result["uid"] == 1000 and result["gid"] == 1000, result
    assert result["read_shared"] == "ok" and result["shared"] == "hello from the host", result
    assert result["write_shared"].startswith("denied"), result
    assert result["write_root"].startswith("denied"), result
    assert result["write_tmp"] == "ok", result
    assert int(result["cap_eff"], 16) == 0 and int(result["cap_bnd"], 16) == 0, result
    assert result["no_new_privs"] == "1", result
    assert result["pid"] == 1, result  # the entrypoint is PID 1 of its own PID namespace
    assert not Path("/iso-written").exists()

    deadline = time.monotonic() + 60
    while True:
        st = json.loads(nm("lab", "status", "--name", lab.name, "-o", "json"))
        prober = next(p for p in st["pods"] if p["name"] == "prober")
        if prober["ready"]:
            break
        assert time.monotonic() < deadline, f"the exec probe saw the host's view: {prober}"
        time.sleep(1)
