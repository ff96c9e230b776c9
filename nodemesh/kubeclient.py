"""A Kubernetes API client for the programs that watch the API (control plane, ingress)."""

from __future__ import annotations

from typing import Any


def load_api_client(kubeconfig: str | None = None) -> Any:
    """In-cluster service account if present, else the kubeconfig (or $KUBECONFIG / ~/.kube).

    The kubernetes package is imported here, on first use, so importing this module costs
    nothing to a program that never talks to the API (the lab's sources)."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    return client.ApiClient(cfg)
