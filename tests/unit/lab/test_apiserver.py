"""The lab's API server stand-in answers install-cni's questions as a cluster would: 401 for a
token it did not issue or whose ServiceAccount is gone, 403 without an RBAC grant, 404 for a
missing object, the object itself otherwise (nodemesh_cni.owner turns these into its verdict)."""

from __future__ import annotations

from pathlib import Path

from nodemesh.cli.install import agent as agent_install
from nodemesh.cli.lab_mesh import LAB_VALUES
from nodemesh.lab.apiserver import ApiServer, Request, parse_path
from nodemesh.lab.manifests import ref_of
from nodemesh.lab.store import Store

DS = "/apis/apps/v1/namespaces/nodemesh/daemonsets/nodemesh-agent"
NS = "/api/v1/namespaces/nodemesh"


def server(tmp_path: Path) -> tuple[ApiServer, str]:
    store = Store(tmp_path / "objects")
    store.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "nodemesh"}})
    for obj in agent_install.objects(LAB_VALUES):
        store.put(obj)
    api = ApiServer(store, directory=tmp_path / "api", ip="127.0.0.1")
    return api, api.issue_token("nodemesh", "nodemesh-agent")


def test_paths() -> None:
    assert parse_path(DS) == Request("apps", "daemonsets", "nodemesh", "nodemesh-agent")
    assert parse_path(NS + "?x=1") == Request("", "namespaces", "", "nodemesh")
    assert parse_path("/apis/apps/v1/daemonsets") is None


def test_install_cni_gets_a_clusters_answers(tmp_path: Path) -> None:
    api, token = server(tmp_path)
    bearer = f"Bearer {token}"
    status, body = api.answer("GET", DS, bearer)
    assert status == 200 and body["kind"] == "DaemonSet"
    assert api.answer("GET", NS, bearer)[0] == 200
    assert api.answer("GET", DS, "Bearer guessed")[0] == 401
    assert api.answer("GET", "/api/v1/namespaces/kube-system", bearer)[0] == 403
    assert api.answer("DELETE", DS, bearer)[0] == 405
    # uninstall deletes the RBAC first: 403, then the ServiceAccount: 401, then the DaemonSet.
    store = api.store
    binding = next(o for o in store.all() if o["kind"] == "ClusterRoleBinding")
    store.delete(ref_of(binding))
    assert api.answer("GET", DS, bearer)[0] == 403
    store.put(binding)
    ds = next(o for o in store.all() if o["kind"] == "DaemonSet")
    store.delete(ref_of(ds))
    assert api.answer("GET", DS, bearer)[0] == 404
    account = next(o for o in store.all() if o["kind"] == "ServiceAccount")
    store.delete(ref_of(account))
    assert api.answer("GET", NS, bearer)[0] == 401
