"""The agent's table keeps the mesh routes: snapshot, deltas, and its own saved snapshot."""

from __future__ import annotations

from nodeagent.upstream.table import DestinationTable
from nodemesh.api import destination_pb2 as pb
from nodemesh.model import ServiceKey
from nodemesh.routing import codec
from nodemesh.routing.spec import compile_route

WEB = ServiceKey("shop", "web")


def route(name: str, weight_v2: int) -> pb.Route:
    obj = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "web-v1", "weight": 100 - weight_v2},
                        {"name": "web-v2", "weight": weight_v2},
                    ]
                }  # fmt: skip
            ],
        },
    }
    return codec.route_to_pb(compile_route(obj))


def weights(table: DestinationTable) -> list[int]:
    sel = table.routes.select(WEB, 80, method="GET", path="/", headers={}, query={})
    assert sel is not None
    return [b.weight for b in sel.rule.backends]


def test_routes_arrive_change_leave_and_are_saved() -> None:
    table = DestinationTable("node1")
    table.apply(pb.Update(revision=1, snapshot=pb.Snapshot(routes=[route("split", 10)], last=True)))
    assert weights(table) == [90, 10]
    table.apply(pb.Update(revision=2, delta=pb.Delta(routes_updated=[route("split", 50)])))
    assert weights(table) == [50, 50]

    saved = DestinationTable("node1")
    saved.apply(pb.Update(revision=2, snapshot=table.snapshot()))
    assert weights(saved) == [50, 50]  # an agent restarting from its saved table routes alike

    gone = pb.Delta(routes_removed=[pb.RouteKey(kind="HTTPRoute", namespace="shop", name="split")])
    table.apply(pb.Update(revision=3, delta=gone))
    assert not table.routes.routed(WEB, 80)
