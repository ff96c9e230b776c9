"""Which pod a piece of the agent works for: the vocabulary enrolment and the proxy share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PodAddress:
    """A meshed pod as the proxy serves it: its name, its network namespace and its address."""

    namespace: str
    name: str
    netns: str
    ip: str
