"""Typed changes the index emits after applying a source event; destination streams consume them."""

from __future__ import annotations

from dataclasses import dataclass

from nodemesh.authz import PolicyKey, Spec
from nodemesh.model import NodeInfo, PodInfo, PodKey, Service, ServiceKey, Workload, WorkloadRef
from nodemesh.routing.model import Route, RouteKey


@dataclass(frozen=True, slots=True)
class ServiceUpdated:
    service: Service


@dataclass(frozen=True, slots=True)
class ServiceRemoved:
    key: ServiceKey


@dataclass(frozen=True, slots=True)
class WorkloadUpdated:
    workload: Workload


@dataclass(frozen=True, slots=True)
class WorkloadRemoved:
    ref: WorkloadRef


@dataclass(frozen=True, slots=True)
class PodUpdated:
    pod: PodInfo


@dataclass(frozen=True, slots=True)
class PodRemoved:
    key: PodKey
    node: str  # the node it was on, so only that node's agent hears about it


@dataclass(frozen=True, slots=True)
class NodeUpdated:
    node: NodeInfo


@dataclass(frozen=True, slots=True)
class NodeRemoved:
    name: str


@dataclass(frozen=True, slots=True)
class PolicyUpdated:
    """An InboundPolicy was added or changed (its spec read and checked)."""

    key: PolicyKey
    spec: Spec


@dataclass(frozen=True, slots=True)
class PolicyRemoved:
    """An InboundPolicy was deleted, or can no longer be read (what it allowed is withdrawn)."""

    key: PolicyKey


@dataclass(frozen=True, slots=True)
class RouteUpdated:
    route: Route


@dataclass(frozen=True, slots=True)
class RouteRemoved:
    key: RouteKey


Change = (
    ServiceUpdated
    | ServiceRemoved
    | WorkloadUpdated
    | WorkloadRemoved
    | PodUpdated
    | PodRemoved
    | NodeUpdated
    | NodeRemoved
    | PolicyUpdated
    | PolicyRemoved
    | RouteUpdated
    | RouteRemoved
)
