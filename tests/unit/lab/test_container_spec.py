"""What a lab container is given, from its pod spec (no namespaces needed): capabilities as
containerd computes them, runAsUser/runAsNonRoot, volumes where declared, the host paths hidden,
and clear errors for what the lab cannot honour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodemesh.lab.container import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    ContainerConfigError,
    container_spec,
    node_host_path,
)


def pod(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "p"},
        "spec": {"containers": [container], **spec},
    }


def spec_of(container: dict[str, Any], tmp_path: Path, **pod_spec: Any) -> dict[str, Any]:
    return container_spec(
        pod(container, **pod_spec),
        container,
        env={"NODE_NAME": "node1"},
        volume_dir=tmp_path / "volumes",
        lab_root=tmp_path / "run" / "lab",
    )


def caps(names: set[str] | frozenset[str]) -> list[int]:
    return sorted(CAPABILITIES.index(n) for n in names)


def test_default_capabilities_are_containerds_without_net_admin(tmp_path: Path) -> None:
    got = spec_of({"name": "c"}, tmp_path)
    assert got["caps"] == caps(DEFAULT_CAPABILITIES)
    assert CAPABILITIES.index("NET_ADMIN") not in got["caps"]
    assert CAPABILITIES.index("SYS_ADMIN") not in got["caps"]
    assert (got["uid"], got["gid"], got["noNewPrivs"], got["readOnlyRoot"]) == (0, 0, False, False)


def test_drop_all_then_add_gives_exactly_the_added_set(tmp_path: Path) -> None:
    sc = {"capabilities": {"add": ["NET_ADMIN", "CAP_NET_RAW", "SYS_ADMIN"], "drop": ["ALL"]}}
    got = spec_of({"name": "agent", "securityContext": sc}, tmp_path)
    assert got["caps"] == caps({"NET_ADMIN", "NET_RAW", "SYS_ADMIN"})


def test_drop_one_keeps_the_rest_and_privileged_gets_all(tmp_path: Path) -> None:
    sc = {"capabilities": {"drop": ["NET_RAW"]}}
    got = spec_of({"name": "c", "securityContext": sc}, tmp_path)
    assert got["caps"] == caps(DEFAULT_CAPABILITIES - {"NET_RAW"})
    priv = spec_of({"name": "c", "securityContext": {"privileged": True}}, tmp_path)
    assert priv["caps"] == list(range(len(CAPABILITIES))) and priv["privileged"]


def test_unknown_capability_is_named(tmp_path: Path) -> None:
    sc = {"capabilities": {"add": ["NET_ADMIM"]}}
    with pytest.raises(ContainerConfigError, match=r"capabilities\.add\[0\].*'NET_ADMIM'"):
        spec_of({"name": "c", "securityContext": sc}, tmp_path)


def test_user_from_container_over_pod_and_run_as_non_root_refused_for_root(
    tmp_path: Path,
) -> None:
    got = spec_of(
        {"name": "c", "securityContext": {"runAsUser": 1000, "allowPrivilegeEscalation": False}},
        tmp_path,
        securityContext={"runAsUser": 5, "runAsGroup": 7, "supplementalGroups": [9]},
    )
    assert (got["uid"], got["gid"], got["groups"], got["noNewPrivs"]) == (1000, 7, [9], True)
    with pytest.raises(ContainerConfigError, match="runAsNonRoot"):
        spec_of({"name": "c", "securityContext": {"runAsNonRoot": True}}, tmp_path)


def test_the_hosts_run_tmp_and_homes_are_hidden(tmp_path: Path) -> None:
    hidden = {h["path"] for h in spec_of({"name": "c"}, tmp_path)["hide"]}
    assert {"/run", "/tmp", "/root", "/home", "/etc/netns"} <= hidden
    # A lab root outside /run (NODEMESH_RUN_DIR) is hidden too, with every other lab's state.
    c = {"name": "c"}
    elsewhere = container_spec(
        pod(c), c, env={}, volume_dir=tmp_path, lab_root=Path("/srv/nodemesh/lab")
    )
    assert "/srv/nodemesh" in {h["path"] for h in elsewhere["hide"]}


def test_volumes_mount_where_declared(tmp_path: Path) -> None:
    lab_root = tmp_path / "run" / "lab"
    (lab_root / "nodes" / "node1").mkdir(parents=True)
    container = {
        "name": "agent",
        "volumeMounts": [
            {"name": "nodes", "mountPath": "/var/run/nodemesh", "subPathExpr": "$(NODE_NAME)"},
            {"name": "netns", "mountPath": "/run/netns", "mountPropagation": "HostToContainer"},
            {"name": "scratch", "mountPath": "/tmp", "readOnly": True},
        ],
    }
    got = spec_of(
        container,
        tmp_path,
        volumes=[
            {"name": "nodes", "hostPath": {"path": str(lab_root / "nodes"), "type": "Directory"}},
            {"name": "netns", "hostPath": {"path": str(tmp_path)}},
            {"name": "scratch", "emptyDir": {}},
        ],
    )
    declared = [m for m in got["mounts"] if m["target"] != m["source"]]
    assert declared == [
        {"source": str(lab_root / "nodes" / "node1"), "target": "/var/run/nodemesh",
         "readOnly": False, "hostToContainer": False},
        {"source": str(tmp_path), "target": "/run/netns", "readOnly": False,
         "hostToContainer": True},
        {"source": str(tmp_path / "volumes" / "scratch"), "target": "/tmp", "readOnly": True,
         "hostToContainer": False},
    ]  # fmt: skip
    assert (tmp_path / "volumes" / "scratch").is_dir()


@pytest.mark.parametrize(
    ("mount", "volume", "message"),
    [
        ({"name": "x", "mountPath": "/a"}, None, r"volumeMounts\[0\]\.name: no volume 'x'"),
        ({"name": "v", "mountPath": "rel"}, {"emptyDir": {}}, "must be an absolute path"),
        ({"name": "v", "mountPath": "/a"}, {"configMap": {"name": "c"}}, "not configMap"),
        ({"name": "v", "mountPath": "/a"}, {"hostPath": {"path": "/nonexistent-lbz",
                                                          "type": "Directory"}},
         "is not a Directory"),
        ({"name": "v", "mountPath": "/a"}, {"hostPath": {"path": "/nonexistent-lbz",
                                                          "type": "DirectoryOrCreate"}},
         "creates host paths only under"),
        ({"name": "v", "mountPath": "/a", "subPath": "../up"}, {"emptyDir": {}},
         "relative path inside the volume"),
    ],
)  # fmt: skip
def test_bad_volumes_name_the_field(
    tmp_path: Path, mount: dict[str, Any], volume: dict[str, Any] | None, message: str
) -> None:
    volumes = [{"name": "v", **volume}] if volume else []
    with pytest.raises(ContainerConfigError, match=message):
        spec_of({"name": "c", "volumeMounts": [mount]}, tmp_path, volumes=volumes)


@pytest.mark.parametrize(
    ("host_path", "on_node"),
    [
        ("/etc/cni/net.d", "etc/cni/net.d"),
        ("/opt/cni/bin", "opt/cni/bin"),
        ("/var/run/nodemesh", "run/nodemesh"),  # /var/run is /run on a node
        ("/var/run/netns", "run/netns"),
        ("/run/xtables.lock", "run/xtables.lock"),
        ("/var/log", "var/log"),
        ("/srv/fixtures", None),  # this machine's, shared by every lab node
        ("/run/nodemesh/lab/objects", None),  # the lab's own state
    ],
)
def test_node_paths_are_the_lab_nodes_own(host_path: str, on_node: str | None) -> None:
    lab_root, node_root = Path("/run/nodemesh/lab"), Path("/run/nodemesh/lab/nodes/node1")
    got = node_host_path(Path(host_path), node_root=node_root, lab_root=lab_root)
    assert got == (node_root / on_node if on_node else Path(host_path))


def test_configmap_and_projected_volumes_are_files_mounted_read_only(tmp_path: Path) -> None:
    def files(vol: dict[str, Any]) -> dict[str, tuple[bytes, int]]:
        return {"ca.crt": (b"anchor", 0o644)}

    container = {"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/etc/x"}]}
    spec = container_spec(
        pod(container, volumes=[{"name": "v", "configMap": {"name": "cm"}}]),
        container,
        env={},
        volume_dir=tmp_path / "volumes",
        lab_root=tmp_path / "run" / "lab",
        volume_files=files,
    )
    (mount,) = [m for m in spec["mounts"] if m["target"] == "/etc/x"]
    assert mount["readOnly"]
    assert (Path(mount["source"]) / "ca.crt").read_bytes() == b"anchor"
