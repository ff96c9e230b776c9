"""The one cluster index every control plane service reads (sans-io: no asyncio, no grpc)."""

from controlplane.index.changes import (
    Change,
    NodeRemoved,
    NodeUpdated,
    PodRemoved,
    PodUpdated,
    PolicyRemoved,
    PolicyUpdated,
    RouteRemoved,
    RouteUpdated,
    ServiceRemoved,
    ServiceUpdated,
    WorkloadRemoved,
    WorkloadUpdated,
)
from controlplane.index.cluster import ClusterIndex

__all__ = [
    "Change",
    "ClusterIndex",
    "NodeRemoved",
    "NodeUpdated",
    "PodRemoved",
    "PodUpdated",
    "PolicyRemoved",
    "PolicyUpdated",
    "RouteRemoved",
    "RouteUpdated",
    "ServiceRemoved",
    "ServiceUpdated",
    "WorkloadRemoved",
    "WorkloadUpdated",
]
