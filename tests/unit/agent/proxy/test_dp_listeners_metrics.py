"""A pod whose listeners could not be opened leaves no series on /metrics."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from nodeagent.observe.metrics import REGISTRY
from nodeagent.pod import PodAddress
from nodeagent.proxy.listeners import ListenerError, PodListeners, ProxyRuntime


async def test_listeners_that_failed_to_open_leave_no_series(tmp_path: Path) -> None:
    # Its netns is gone before the listeners could be bound (a pod deleted while enrolling):
    # the enrolment fails, and nothing of the pod may stay on /metrics for ever after.
    pod = PodAddress("shop", "never-served", str(tmp_path / "gone-netns"), "10.0.0.9")
    with ThreadPoolExecutor(1) as pool:
        listeners = PodListeners(pod, ProxyRuntime(mark=0x6E6D, executor=pool))
        with pytest.raises((ListenerError, OSError)):
            await listeners.open()
    assert 'pod="never-served"' not in generate_latest(REGISTRY).decode()
