"""Fakes for the enrolment tests: rules and listeners that record what was asked of them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from nodeagent.enrol.statefile import PodRecord, StateFile
from nodeagent.pod import PodAddress
from nodeagent.rules import PodPlan, RuleDiff, diff_plan
from nodeagent.rules.model import NatState
from nodemesh.api import destination_pb2 as pb
from nodemesh.netns import NetnsId


class FakeRules:
    def __init__(self) -> None:
        self.installed: dict[str, PodPlan] = {}
        self.fail_apply: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    async def apply(self, netns: str, plan: PodPlan) -> RuleDiff:
        self.calls.append(("apply", netns))
        if netns in self.fail_apply:
            raise RuntimeError("iptables said no")
        before = self.installed.get(netns)
        self.installed[netns] = plan
        return RuleDiff() if before == plan else RuleDiff(missing=tuple(plan.rules()))

    async def remove(self, netns: str) -> NatState:
        self.calls.append(("remove", netns))
        self.installed.pop(netns, None)
        return NatState({})

    async def check(self, netns: str, plan: PodPlan) -> RuleDiff:
        have = self.installed.get(netns)
        if have is None:
            return diff_plan(plan.nat, NatState({}))
        return RuleDiff() if have == plan else RuleDiff(out_of_order=("changed",))


class FakeListeners:
    fail_open: set[str] = set()

    def __init__(self, pod: PodAddress, registry: dict[str, FakeListeners]) -> None:
        self.pod = pod
        self.registry = registry
        self.opened = False

    async def open(self) -> None:
        if self.pod.netns in self.fail_open:
            raise OSError(98, "Address already in use")
        assert self.pod.netns not in self.registry, "listeners opened twice in one netns"
        self.opened = True
        self.registry[self.pod.netns] = self

    def close(self, *, forget_metrics: bool = False) -> None:
        self.opened = False
        self.registry.pop(self.pod.netns, None)

    def is_open(self) -> bool:
        return self.opened


class MemoryStore(StateFile):
    """A real StateFile in a temp dir, counting saves."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.saves = 0

    def save(self, records: Iterable[PodRecord]) -> None:
        self.saves += 1
        super().save(records)


def pod_pb(
    name: str,
    *,
    ns: str = "shop",
    meshed: bool = True,
    ip: str = "10.0.0.2",
    node: str = "node1",
    skip_in: tuple[int, int] | None = None,
    uid: str | None = None,
    host_network: bool = False,
) -> pb.Pod:
    mesh = pb.MeshSettings(meshed=meshed)
    if skip_in:
        mesh.skip_inbound_ports.append(pb.PortRange(first=skip_in[0], last=skip_in[1]))
    return pb.Pod(
        key=pb.PodKey(namespace=ns, name=name),
        uid=uid or f"uid-{name}",
        node=node,
        ip=ip,
        phase="Running",
        mesh=mesh,
        host_network=host_network,
    )


def snapshot(*pods: pb.Pod, revision: int = 1) -> pb.Update:
    return pb.Update(revision=revision, snapshot=pb.Snapshot(pods=list(pods), last=True))


def delta(*pods: pb.Pod, removed: tuple[str, ...] = (), revision: int = 2) -> pb.Update:
    d = pb.Delta(pods_updated=list(pods))
    for name in removed:
        d.pods_removed.append(pb.PodKey(namespace="shop", name=name))
    return pb.Update(revision=revision, delta=d)


def fake_netns(tmp: Path, name: str) -> tuple[str, NetnsId]:
    """A plain file stands in for a netns: the enroller only stats it (dev + inode)."""
    path = tmp / name
    path.write_text("")
    return str(path), NetnsId.of(path)
