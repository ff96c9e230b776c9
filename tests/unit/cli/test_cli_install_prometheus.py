"""`install --prometheus`: the bundled Prometheus scrapes the agents' admin port with
kubernetes_sd without clobbering the labels the agents put on their metrics (Linkerd's pod,
namespace, deployment...), and the control plane answers Stat and Edges from it."""

from __future__ import annotations

import yaml
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.observe.events import Peer, RequestObserved, TcpOpened
from nodeagent.observe.stats.exposition import AggregateCollector
from nodeagent.observe.stats.series import Aggregate
from nodemesh.cli.main import cli
from nodemesh.ports import AGENT_ADMIN as ADMIN_PORT


def render(*args: str) -> list[dict]:
    res = CliRunner().invoke(cli, ["install", *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def _agent_label_names() -> set[str]:
    web = Peer("10.0.0.1", "shop", "web-0", "Deployment", "web", "", "spiffe://x/ns/shop/sa/web")
    api = Peer("10.0.0.2", "shop", "api-0", "StatefulSet", "api", "api", "spiffe://x/ns/shop/sa/a")
    agg = Aggregate()
    for direction in ("outbound", "inbound"):
        agg.request(
            RequestObserved(
                req_id=1,
                conn_id=1,
                direction=direction,
                src=web,
                dst=api,
                protocol="http1",
                tls=True,
                method="GET",
                authority="api.shop",
                path="/",
                status=200,
                grpc_status=None,
                classification="success",
                reset=False,
                latency_first_byte_s=0.001,
                latency_s=0.001,
                request_bytes=1,
                response_bytes=1,
                started_at=0.0,
            )  # fmt: skip
        )
        agg.tcp_opened(TcpOpened(1, direction, web, api, "http1", True, 0.0))
    registry = CollectorRegistry()
    registry.register(AggregateCollector(agg))
    text = generate_latest(registry).decode()
    return {
        name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for name in sample.labels
    }


def _scrape_jobs(docs: list[dict]) -> dict[str, dict]:
    cm = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-config")
        and "prometheus.yml" in d.get("data", {})
    )  # fmt: skip
    config = yaml.safe_load(cm["data"]["prometheus.yml"])
    return {job["job_name"]: job for job in config["scrape_configs"]}


def test_the_agent_job_keeps_the_agents_own_labels() -> None:
    job = _scrape_jobs(render("--prometheus"))["nodemesh-agent"]
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    targets = {r["target_label"] for r in job["relabel_configs"] if "target_label" in r}
    agent_labels = _agent_label_names()
    assert {"namespace", "pod", "deployment", "dst_statefulset", "client_id"} <= agent_labels
    # A target label the scraped series also carry would be renamed exported_<name> by
    # Prometheus (honor_labels is false): Linkerd's queries by pod would find nothing.
    assert not (targets & agent_labels), targets & agent_labels
    assert "node" in targets  # stat by node groups on it
    # Only the agent's admin port (its /metrics) is scraped.
    port_rules = [
        r for r in job["relabel_configs"]
        if r.get("source_labels") == ["__meta_kubernetes_pod_container_port_number"]
    ]  # fmt: skip
    assert [(r["regex"], r["action"]) for r in port_rules] == [(str(ADMIN_PORT), "keep")]


def _controlplane_args(docs: list[dict]) -> list[str]:
    deploy = next(
        d for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "nodemesh-controlplane"
    )  # fmt: skip
    return deploy["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_control_plane_asks_the_bundled_prometheus() -> None:
    args = _controlplane_args(render("--prometheus", "--nodemesh-namespace", "mesh"))
    assert "--prometheus-url=http://nodemesh-prometheus.mesh.svc.cluster.local:9090" in args
    assert not [a for a in _controlplane_args(render()) if a.startswith("--prometheus-url")]
