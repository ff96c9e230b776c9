"""The lab stops a container with the signal its real image would get from a container runtime."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from nodemesh.lab.pods import stop_signal
from tests.unit.lab.test_container_spec import ContainerConfigError, spec_of


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        ({"image": "haproxy:2.6"}, signal.SIGUSR1),  # soft stop; as PID 1 it ignores SIGTERM
        ({"image": "docker.io/library/haproxy"}, signal.SIGUSR1),
        ({"image": "haproxy@sha256:0123"}, signal.SIGUSR1),
        ({"image": "nginx:1.25"}, signal.SIGQUIT),  # graceful quit
        ({"image": "registry.k8s.io/ingress-nginx/controller:v1.9.4"}, signal.SIGTERM),
        ({"image": "python:3.11"}, signal.SIGTERM),
        ({}, signal.SIGTERM),
        ({"image": "haproxy", "lifecycle": {"stopSignal": "SIGTERM"}}, signal.SIGTERM),
        ({"image": "busybox", "lifecycle": {"stopSignal": "SIGINT"}}, signal.SIGINT),
    ],
)
def test_stop_signal(container: dict[str, object], expected: signal.Signals) -> None:
    assert stop_signal(container) is expected


@pytest.mark.parametrize("bad", ["SIGNOPE", "TERM", 15])
def test_a_stop_signal_that_is_no_signal_name_is_refused_naming_it(
    bad: object, tmp_path: Path
) -> None:
    with pytest.raises(ContainerConfigError, match=r"ns/p container c: lifecycle\.stopSignal"):
        spec_of({"name": "c", "lifecycle": {"stopSignal": bad}}, tmp_path)
