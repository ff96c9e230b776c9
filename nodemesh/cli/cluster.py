"""Reaching a cluster's control plane: kubeconfig, a ready control plane pod, a port-forward."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from nodemesh import ports
from nodemesh.cli.portforward import LocalForward, pod_opener
from nodemesh.cli.target import Endpoint, TargetError, TargetOptions


def api_client(options: TargetOptions) -> client.ApiClient:
    # The client reads $KUBECONFIG once, when it is imported; read it now, as kubectl does.
    config_file = options.kubeconfig or os.environ.get("KUBECONFIG") or None
    try:
        return config.new_client_from_config(config_file=config_file, context=options.context)
    except (ConfigException, OSError, ValueError) as e:
        raise TargetError(f"cannot load kubeconfig: {e}") from None


def ready_pod(api: client.ApiClient, *, namespace: str, component: str) -> str:
    core = client.CoreV1Api(api)
    try:
        pods = core.list_namespaced_pod(
            namespace,
            label_selector=f"app.kubernetes.io/name=nodemesh-{component}",
            _request_timeout=10,
        ).items
    except client.ApiException as e:
        raise TargetError(f"cannot list pods in namespace {namespace!r}: {e.reason}") from None
    except Exception as e:  # urllib3 connection errors: the API server is not there
        raise TargetError(f"cannot reach the Kubernetes API: {e}") from None
    for pod in pods:
        conditions = (pod.status.conditions if pod.status else None) or []
        if any(c.type == "Ready" and c.status == "True" for c in conditions):
            return str(pod.metadata.name if pod.metadata else "")
    if not pods:
        raise TargetError(
            f"no nodemesh-{component} pod in namespace {namespace!r}: is nodemesh installed? "
            "(nodemesh install | kubectl apply -f -)"
        )
    raise TargetError(f"no ready nodemesh-{component} pod in namespace {namespace!r}")


@contextlib.contextmanager
def port_forward(
    api: Any, *, namespace: str, component: str, port: int, local_port: int = 0
) -> Iterator[str]:
    pod = ready_pod(api, namespace=namespace, component=component)
    pf = LocalForward(pod_opener(api, namespace=namespace, pod=pod, port=port), port=local_port)
    try:
        yield pf.address
    finally:
        pf.close()


@contextlib.contextmanager
def cluster_endpoint(options: TargetOptions) -> Iterator[Endpoint]:
    api = api_client(options)
    where = f"cluster (context {options.context})" if options.context else "cluster"
    try:
        with port_forward(
            api,
            namespace=options.nodemesh_namespace,
            component="controlplane",
            port=ports.PUBLIC_API,
        ) as address:
            yield Endpoint(address, where, kube=api)
    finally:
        api.close()
