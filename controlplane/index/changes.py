"""Typed changes the index emits after applying a source event; destination streams consume them."""

from __future__ import annotations

from dataclasses import dataclass

from nodemesh.model import NodeInfo, PodInfo, PodKey, Service, ServiceKey, Workload, WorkloadRef


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


Change = (
    ServiceUpdated
    | ServiceRemoved
    | WorkloadUpdated
    | WorkloadRemoved
    | PodUpdated
    | PodRemoved
    | NodeUpdated
    | NodeRemoved
)
