"""`lab up --prometheus`'s pieces without a lab: the Prometheus pod joins the mesh manifest and
the control plane gets --prometheus-url; the file_sd targets name every node's agent admin port."""

from __future__ import annotations

import json

import yaml

from nodemesh.cli import lab as lab_cli
from nodemesh.cli.lab_mesh import mesh_manifest
from nodemesh.lab.manifests import parse
from nodemesh.lab.paths import LabPaths
from nodemesh.ports import AGENT_ADMIN as ADMIN_PORT


def test_the_mesh_manifest_runs_prometheus_and_points_the_control_plane_at_it() -> None:
    paths = LabPaths("promunit")
    text = mesh_manifest(paths, anchor=b"anchor", prometheus=True)
    parse(text, source="test")  # the lab accepts it
    docs = [d for d in yaml.safe_load_all(text) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "nodemesh-prometheus"), ("Service", "nodemesh-prometheus")} <= kinds
    cp = next(d for d in docs if d["metadata"]["name"] == "nodemesh-controlplane"
              and d["kind"] == "Deployment")  # fmt: skip
    args = cp["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--prometheus-url=http://nodemesh-prometheus.nodemesh.svc.cluster.local:9090" in args
    plain = [d for d in yaml.safe_load_all(mesh_manifest(paths, anchor=b"anchor")) if d]
    assert not any(d["metadata"]["name"] == "nodemesh-prometheus" for d in plain)


def test_file_sd_targets_every_agent(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    paths = LabPaths("promunit")
    monkeypatch.setattr(LabPaths, "root", property(lambda self: tmp_path))
    nodes = [{"name": "node2", "ip": "172.18.0.2"}, {"name": "node1", "ip": "172.18.0.1"}]
    lab_cli._write_prometheus_config(paths, nodes)
    targets = json.loads((tmp_path / "prometheus" / "agents.json").read_text())
    assert targets == [
        {"targets": [f"172.18.0.1:{ADMIN_PORT}"], "labels": {"node": "node1"}},
        {"targets": [f"172.18.0.2:{ADMIN_PORT}"], "labels": {"node": "node2"}},
    ]
    config = yaml.safe_load((tmp_path / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == [str(tmp_path / "prometheus" / "agents.json")]
    assert config["global"]["scrape_interval"] == "1s"
