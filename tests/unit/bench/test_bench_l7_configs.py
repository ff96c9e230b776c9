"""The HAProxy side of the L7 comparison: haproxy itself accepts the HTTP-mode configuration the
bench writes, and it says what the HTTPRoute of nodemesh-l7 says (timeout, retries, codes)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.meshbench import haproxy, manifests


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_http_mode_config(tmp_path: Path) -> None:
    certs = haproxy.write_certs(tmp_path)
    cfg = haproxy.http_client_config(
        certs=certs, servers=["10.9.0.1", "10.9.0.2"], timeout_s=manifests.ROUTE_TIMEOUT_S,
        retries=manifests.ROUTE_RETRY_ATTEMPTS, retry_codes=manifests.ROUTE_RETRY_CODES,
    )  # fmt: skip
    for name, text in (("client.cfg", cfg),
                       ("server.cfg", haproxy.server_config(certs=certs, app_ports=(80,)))):  # fmt: skip
        (tmp_path / name).write_text(text)
        res = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / name)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0, (name, res.stdout, res.stderr)
    assert "mode http" in cfg and "balance roundrobin" in cfg
    assert f"timeout server {manifests.ROUTE_TIMEOUT_S:g}s" in cfg
    assert f"retries {manifests.ROUTE_RETRY_ATTEMPTS}" in cfg and "retry-on" in cfg
    assert cfg.count(" server s") == 2


def test_the_route_and_the_http_only_server_pods() -> None:
    bins = manifests.Binaries(http_server=Path("/x/server"), grpc_script=Path("/x/grpc.py"))
    objs = manifests.path_objects("nodemesh-l7", bins=bins, client_node="n1", server_node="n2",
                                  haproxy_dir=None)  # fmt: skip
    route = next(o for o in objs if o["kind"] == "HTTPRoute")
    rule = route["spec"]["rules"][0]
    assert rule["timeouts"]["request"] == f"{manifests.ROUTE_TIMEOUT_S:g}s"
    assert rule["retry"] == {"codes": list(manifests.ROUTE_RETRY_CODES),
                             "attempts": manifests.ROUTE_RETRY_ATTEMPTS}  # fmt: skip
    server = next(
        o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "server"
    )
    assert server["spec"]["replicas"] >= 2
    ns = next(o for o in objs if o["kind"] == "Namespace")
    assert ns["metadata"]["labels"] == manifests.MESH_LABEL
