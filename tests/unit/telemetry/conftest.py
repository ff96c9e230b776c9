"""Fixtures of the telemetry tests."""

import pytest
from agent_reports import Clock

from controlplane.telemetry import TelemetryStore


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> TelemetryStore:
    return TelemetryStore(clock=clock)
