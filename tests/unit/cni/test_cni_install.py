"""install-cni against conflists shaped like Calico, Flannel, Cilium (chaining) and bridge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cni_harness import NODE_PATH
from nodemesh_cni import conflist
from nodemesh_cni.install import (
    InstallError,
    WatchTick,
    conf_dir_lock,
    find_primary,
    install_binary,
    install_config,
    uninstall_binary,
    uninstall_config,
    watch,
)

FIXTURES = Path(__file__).parent / "fixtures"
PRIMARIES = ["10-calico.conflist", "10-flannel.conflist", "05-cilium.conflist", "10-bridge.conf"]
ENTRY = conflist.plugin_entry()


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (hidden ones and subdirectories included) with its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    path = tmp_path / "net.d"
    path.mkdir()
    return path


def place(conf_dir: Path, name: str, *, as_name: str | None = None) -> Path:
    target = conf_dir / (as_name or name)
    target.write_bytes((FIXTURES / name).read_bytes())
    return target


def plugins_of(path: Path) -> list[dict[str, object]]:
    doc = json.loads(path.read_bytes())
    return doc["plugins"]


@pytest.mark.parametrize("name", PRIMARIES)
def test_install_appends_nodemesh_last_and_keeps_the_chain(conf_dir: Path, name: str) -> None:
    place(conf_dir, name)
    original = json.loads((FIXTURES / name).read_bytes())

    result = install_config(conf_dir, entry=ENTRY)

    assert result.changed
    # What the runtime now loads: the first config file by name.
    assert find_primary(conf_dir) == result.path
    doc = json.loads(result.path.read_bytes())
    if "plugins" in original:
        assert result.path.name == name
        assert doc["plugins"] == [*original["plugins"], ENTRY]
        assert {k: v for k, v in doc.items() if k != "plugins"} == {
            k: v for k, v in original.items() if k != "plugins"
        }
    else:  # the single bridge .conf became a .conflist and the .conf is gone
        assert result.path.name == "10-bridge.conflist"
        assert not (conf_dir / name).exists()
        assert doc["cniVersion"] == original["cniVersion"] and doc["name"] == original["name"]
        assert doc["plugins"] == [original, ENTRY]


@pytest.mark.parametrize("name", PRIMARIES)
def test_install_twice_writes_nothing_the_second_time(conf_dir: Path, name: str) -> None:
    place(conf_dir, name)
    first = install_config(conf_dir, entry=ENTRY)
    before = snapshot(conf_dir)
    stat = first.path.stat()

    second = install_config(conf_dir, entry=ENTRY)

    assert not second.changed
    assert snapshot(conf_dir) == before
    after = first.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)


@pytest.mark.parametrize("name", PRIMARIES)
def test_uninstall_restores_the_primary_byte_for_byte(conf_dir: Path, name: str) -> None:
    place(conf_dir, name)
    before = snapshot(conf_dir)
    install_config(conf_dir, entry=ENTRY)
    uninstall_config(conf_dir)
    assert snapshot(conf_dir) == before  # no entry, no state dir, no temp file left


@pytest.mark.parametrize("name", PRIMARIES)
def test_reappends_after_the_primary_rewrites_its_file(conf_dir: Path, name: str) -> None:
    path = place(conf_dir, name)
    install_config(conf_dir, entry=ENTRY)
    # The primary CNI's installer runs again (an upgrade) and writes a new config of its own.
    rewritten = json.loads((FIXTURES / name).read_bytes())
    rewritten["x-upgraded"] = True
    path.write_text(json.dumps(rewritten))

    result = install_config(conf_dir, entry=ENTRY)

    assert result.changed
    doc = json.loads(result.path.read_bytes())
    # A single conf is wrapped: its keys live in the first plugin of the new conflist.
    assert (doc if name.endswith(".conflist") else doc["plugins"][0])["x-upgraded"] is True
    assert plugins_of(result.path)[-1] == ENTRY
    assert [p for p in conf_dir.iterdir() if p.is_file()] == [result.path]
    uninstall_config(conf_dir)
    # Uninstall now gives back the primary's *new* file.
    assert path.read_text() == json.dumps(rewritten)
    assert sorted(p.name for p in conf_dir.iterdir()) == [name]


def test_changed_settings_replace_the_entry_and_uninstall_still_restores(conf_dir: Path) -> None:
    place(conf_dir, "10-flannel.conflist")
    before = snapshot(conf_dir)
    install_config(conf_dir, entry=ENTRY)
    fail_open = conflist.plugin_entry(failure_policy="fail-open")

    result = install_config(conf_dir, entry=fail_open)

    assert result.changed
    plugins = plugins_of(result.path)
    assert [p["type"] for p in plugins] == ["flannel", "portmap", "nodemesh-cni"]
    assert plugins[-1]["failurePolicy"] == "fail-open"
    uninstall_config(conf_dir)
    assert snapshot(conf_dir) == before


def test_uninstall_keeps_edits_made_after_install(conf_dir: Path) -> None:
    path = place(conf_dir, "10-calico.conflist")
    install_config(conf_dir, entry=ENTRY)
    doc = json.loads(path.read_bytes())
    doc["plugins"].insert(1, {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}})
    path.write_text(json.dumps(doc))

    uninstall_config(conf_dir)

    assert [p["type"] for p in plugins_of(path)] == ["calico", "tuning", "portmap", "bandwidth"]
    assert not (conf_dir / ".nodemesh-install").exists()


def test_only_the_first_config_by_name_is_patched(conf_dir: Path) -> None:
    place(conf_dir, "05-cilium.conflist")
    calico = place(conf_dir, "10-calico.conflist")
    (conf_dir / "99-loopback.conf.bak").write_text("not a config")

    result = install_config(conf_dir, entry=ENTRY)

    assert result.path.name == "05-cilium.conflist"
    assert calico.read_bytes() == (FIXTURES / "10-calico.conflist").read_bytes()


def test_primary_moving_to_another_file_restores_the_old_one(conf_dir: Path) -> None:
    flannel = place(conf_dir, "10-flannel.conflist")
    install_config(conf_dir, entry=ENTRY)
    # Cilium arrives in chaining mode and writes a config that sorts first.
    place(conf_dir, "05-cilium.conflist")

    result = install_config(conf_dir, entry=ENTRY)

    assert result.path.name == "05-cilium.conflist"
    assert flannel.read_bytes() == (FIXTURES / "10-flannel.conflist").read_bytes()
    uninstall_config(conf_dir)
    assert (conf_dir / "05-cilium.conflist").read_bytes() == (
        FIXTURES / "05-cilium.conflist"
    ).read_bytes()


def test_single_conf_rewritten_by_its_cni_is_converted_again(conf_dir: Path) -> None:
    place(conf_dir, "10-bridge.conf")
    install_config(conf_dir, entry=ENTRY)
    place(conf_dir, "10-bridge.conf")  # the primary writes its .conf again next to our .conflist

    result = install_config(conf_dir, entry=ENTRY)

    assert result.path.name == "10-bridge.conflist"
    assert sorted(p.name for p in conf_dir.iterdir() if p.is_file()) == ["10-bridge.conflist"]
    uninstall_config(conf_dir)
    assert snapshot(conf_dir) == {"10-bridge.conf": (FIXTURES / "10-bridge.conf").read_bytes()}


def test_json_extension_is_a_config_too(conf_dir: Path) -> None:
    place(conf_dir, "10-bridge.conf", as_name="10-bridge.json")
    result = install_config(conf_dir, entry=ENTRY)
    assert result.path.name == "10-bridge.conflist"
    uninstall_config(conf_dir)
    assert sorted(p.name for p in conf_dir.iterdir()) == ["10-bridge.json"]


def test_refuses_to_overwrite_a_conflist_it_did_not_write(conf_dir: Path) -> None:
    place(conf_dir, "10-bridge.conf")
    place(conf_dir, "10-flannel.conflist", as_name="10-bridge.conflist")
    with pytest.raises(InstallError, match="exists and was not written by nodemesh"):
        install_config(conf_dir, entry=ENTRY)


# --- errors -----------------------------------------------------------------------------------


def test_empty_conf_dir_is_a_clear_error(conf_dir: Path) -> None:
    (conf_dir / "README").write_text("nothing here")
    with pytest.raises(InstallError, match=r"no CNI config \(\*\.conf, \*\.conflist, \*\.json\)"):
        install_config(conf_dir, entry=ENTRY)


def test_missing_conf_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="does not exist"):
        install_config(tmp_path / "absent", entry=ENTRY)


def test_broken_json_names_the_file_and_position(conf_dir: Path) -> None:
    path = conf_dir / "10-calico.conflist"
    path.write_text('{\n  "name": "k8s-pod-network",\n  "plugins": [\n    {"type": "calico",}\n')
    with pytest.raises(InstallError) as caught:
        install_config(conf_dir, entry=ENTRY)
    assert str(path) in str(caught.value)
    assert "line 4 column 23" in str(caught.value)


@pytest.mark.parametrize("plugins", ["[]", '"calico"'])
def test_conflist_without_plugins_is_a_clear_error(conf_dir: Path, plugins: str) -> None:
    (conf_dir / "10-x.conflist").write_text(f'{{"name": "x", "plugins": {plugins}}}')
    with pytest.raises(InstallError, match="10-x.conflist: conflist has no plugins"):
        install_config(conf_dir, entry=ENTRY)


def test_conf_without_type_is_a_clear_error(conf_dir: Path) -> None:
    (conf_dir / "10-x.conf").write_text('{"name": "x"}')
    with pytest.raises(InstallError, match="no type"):
        install_config(conf_dir, entry=ENTRY)


# --- watch ------------------------------------------------------------------------------------


def test_watch_reappends_when_the_primary_rewrites_and_stops_on_the_hook(conf_dir: Path) -> None:
    path = place(conf_dir, "10-calico.conflist")
    ticks: list[WatchTick] = []
    stop = threading.Event()

    def on_iteration(tick: WatchTick) -> bool:
        ticks.append(tick)
        return not stop.is_set()

    thread = threading.Thread(
        target=watch,
        args=(conf_dir,),
        kwargs={"entry": ENTRY, "interval": 0.02, "on_iteration": on_iteration},
    )
    thread.start()
    try:
        _wait_for(lambda: plugins_of(path)[-1] == ENTRY)
        path.write_bytes((FIXTURES / "10-calico.conflist").read_bytes())  # primary rewrites
        _wait_for(lambda: plugins_of(path)[-1] == ENTRY)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert sum(1 for t in ticks if t.result is not None and t.result.changed) == 2
    assert all(t.error is None for t in ticks)


def test_watch_waits_for_the_primary_cni_to_show_up(conf_dir: Path) -> None:
    ticks: list[WatchTick] = []

    def on_iteration(tick: WatchTick) -> bool:
        ticks.append(tick)
        if tick.iteration == 3:
            place(conf_dir, "10-flannel.conflist")
        return tick.iteration < 5

    watch(conf_dir, entry=ENTRY, interval=0.01, on_iteration=on_iteration)

    assert [t.error is not None for t in ticks] == [True, True, True, False, False]
    assert "no CNI config" in str(ticks[0].error)
    assert plugins_of(conf_dir / "10-flannel.conflist")[-1] == ENTRY


def _wait_for(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except (OSError, ValueError):
            pass  # caught mid-rename or mid-write
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


# --- the executable ---------------------------------------------------------------------------


def test_install_binary_copies_atomically_and_idempotently(
    tmp_path: Path, zipapp_plugin: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    assert install_binary(zipapp_plugin, bin_dir=bin_dir)
    target = bin_dir / "nodemesh-cni"
    assert target.read_bytes() == zipapp_plugin.read_bytes()
    assert target.stat().st_mode & 0o777 == 0o755
    inode = target.stat().st_ino
    assert not install_binary(zipapp_plugin, bin_dir=bin_dir)
    assert target.stat().st_ino == inode
    assert sorted(p.name for p in bin_dir.iterdir()) == ["nodemesh-cni"]
    # The copy is what the runtime will execute.
    proc = subprocess.run(
        [str(target)],
        input=b'{"cniVersion": "1.0.0"}',
        env={"PATH": NODE_PATH, "CNI_COMMAND": "VERSION"},
        capture_output=True,
        timeout=30,
    )
    assert json.loads(proc.stdout)["supportedVersions"][-1] == "1.1.0"
    uninstall_binary(bin_dir=bin_dir)
    assert list(bin_dir.iterdir()) == []


def _dirs(conf_dir: Path, bin_dir: Path, plugin: Path) -> list[str]:
    """install-cni's arguments for where the conf files, the binary and its source are."""
    return ["--conf-dir", str(conf_dir), "--bin-dir", str(bin_dir), "--plugin", str(plugin)]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodemesh_cni.install", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_install_then_uninstall_leaves_nothing(conf_dir: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    place(conf_dir, "10-bridge.conf")
    before = snapshot(conf_dir)
    common = ["--conf-dir", str(conf_dir), "--bin-dir", str(bin_dir)]

    # No --plugin: install-cni builds the zipapp from its own package.
    done = _cli("install", *common, "--agent-socket", "/run/nm/cni.sock", "--log-level", "debug")
    assert done.returncode == 0, done.stderr
    entry = plugins_of(conf_dir / "10-bridge.conflist")[-1]
    assert entry["agentSocket"] == "/run/nm/cni.sock" and entry["logLevel"] == "debug"
    assert os.access(bin_dir / "nodemesh-cni", os.X_OK)

    done = _cli("uninstall", *common)
    assert done.returncode == 0, done.stderr
    assert snapshot(conf_dir) == before
    assert list(bin_dir.iterdir()) == []


def test_cli_reports_errors_with_a_non_zero_exit(conf_dir: Path, tmp_path: Path) -> None:
    (conf_dir / "10-broken.conflist").write_text("{")
    done = _cli("install", "--conf-dir", str(conf_dir), "--bin-dir", str(tmp_path))
    assert done.returncode == 1
    assert "10-broken.conflist: broken JSON at line 1 column 2" in done.stderr


def test_cli_watch_reappends_and_cleans_up_on_sigterm(
    conf_dir: Path, tmp_path: Path, zipapp_plugin: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    path = place(conf_dir, "10-flannel.conflist")
    before = snapshot(conf_dir)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nodemesh_cni.install",
            "watch",
            "--conf-dir",
            str(conf_dir),
            "--bin-dir",
            str(bin_dir),
            "--plugin",
            str(zipapp_plugin),
            "--interval",
            "0.05",
            "--cleanup-on-exit",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: plugins_of(path)[-1]["type"] == "nodemesh-cni", timeout=20)
        path.write_bytes((FIXTURES / "10-flannel.conflist").read_bytes())
        _wait_for(lambda: plugins_of(path)[-1]["type"] == "nodemesh-cni")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert snapshot(conf_dir) == before
    assert list(bin_dir.iterdir()) == []


def test_an_entry_never_exists_without_its_binary_whatever_runs_when(
    conf_dir: Path, tmp_path: Path, zipapp_plugin: Path
) -> None:
    """`uninstall` run beside a watching install-cni (as in the DaemonSet's container) used to
    be followed within a poll by the entry coming back without the binary: then every pod on
    the node failed with 'failed to find plugin "nodemesh-cni"'. Sampled all along: an entry
    that names nodemesh-cni has its executable in the bin dir."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    path = place(conf_dir, "10-flannel.conflist")
    common = _dirs(conf_dir, bin_dir, zipapp_plugin)
    broken: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        binary = bin_dir / "nodemesh-cni"
        while not stop.is_set():
            # The binary is looked for before and after the entry is read: a sample that read
            # the entry just before an uninstall removed it (entry, then binary) found the
            # binary there before; an entry left without its binary lacks it both times.
            before = os.access(binary, os.X_OK)
            try:
                named = any(p["type"] == "nodemesh-cni" for p in plugins_of(path))
            except (ValueError, OSError):
                continue  # between a write and its rename nothing is half-written, but be safe
            if named and not before and not os.access(binary, os.X_OK):
                broken.append("entry without binary")
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodemesh_cni.install", "watch", *common, "--interval", "0.05"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: plugins_of(path)[-1]["type"] == "nodemesh-cni", timeout=20)
        for _ in range(3):
            assert _cli("uninstall", *common).returncode == 0
            time.sleep(0.3)  # several polls of the watch
            assert _cli("install", *common).returncode == 0
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        stop.set()
        sampler.join()
    assert not broken, f"{len(broken)} samples saw the entry without the binary"


def test_install_waits_while_an_uninstall_holds_the_conf_dir(
    conf_dir: Path, tmp_path: Path, zipapp_plugin: Path
) -> None:
    """Adding (binary, then entry) and removing (entry, then binary) each hold a lock on the
    conf dir: a watch's poll that found the binary could otherwise write the entry back after
    an uninstall beside it removed both (test_an_entry_never_exists_without_its_binary_whatever_runs_when
    caught that in a CI run: 21 samples of an entry without its binary)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    path = place(conf_dir, "10-flannel.conflist")
    common = _dirs(conf_dir, bin_dir, zipapp_plugin)
    done: list[int] = []
    with conf_dir_lock(conf_dir):
        installing = threading.Thread(
            target=lambda: done.append(_cli("install", *common).returncode)
        )
        installing.start()
        time.sleep(1.5)
        assert not done and not (bin_dir / "nodemesh-cni").exists()
        assert all(p["type"] != "nodemesh-cni" for p in plugins_of(path))
    installing.join(timeout=60)
    assert done == [0]
    assert plugins_of(path)[-1]["type"] == "nodemesh-cni"
    assert os.access(bin_dir / "nodemesh-cni", os.X_OK)
