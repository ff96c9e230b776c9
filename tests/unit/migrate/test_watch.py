"""When `migrate apply` rolls back: the drop rule, and the apply loop over a fake cluster."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nodemesh.migrate import runner, watch
from nodemesh.migrate.plan import Change, Step

S = watch.Sample


def test_a_drop_beyond_tolerance_and_chance_is_seen() -> None:
    before = watch.baseline([S("emojivoto/web", 600, 0.86), S("emojivoto/emoji", 300, 1.0)])
    assert watch.drops(before, [S("emojivoto/web", 150, 0.40), S("emojivoto/emoji", 75, 1.0)]) == [
        watch.Drop("emojivoto/web", 0.86, 0.40, 150)]  # fmt: skip


def test_chance_alone_is_not_a_drop() -> None:
    # 86% over 50 requests: three standard errors are 15 points; 76% is within them.
    before = watch.baseline([S("emojivoto/web", 600, 0.86)])
    assert watch.drops(before, [S("emojivoto/web", 50, 0.76)]) == []
    assert watch.drops(before, [S("emojivoto/web", 50, 0.60)]) != []
    # A perfect workload has no noise: the tolerance decides.
    perfect = watch.baseline([S("a/b", 100, 1.0)])
    assert watch.drops(perfect, [S("a/b", 100, 0.96)]) == []
    assert watch.drops(perfect, [S("a/b", 100, 0.94)]) == [watch.Drop("a/b", 1.0, 0.94, 100)]


def test_too_few_requests_judge_nothing_either_way() -> None:
    assert watch.baseline([S("a/b", 5, 1.0), S("a/c", 50, None)]) == {}
    before = watch.baseline([S("a/b", 20, 1.0)])
    assert watch.drops(before, [S("a/b", 3, 0.0)]) == []
    # A workload new since the step has no level to fall from.
    assert watch.drops(before, [S("a/b", 20, 1.0), S("a/new", 100, 0.0)]) == []


def test_silence_everywhere_has_dropped_one_quiet_workload_has_not() -> None:
    before = watch.baseline([S("a/b", 100, 0.99), S("a/c", 100, 0.97)])
    assert watch.drops(before, []) == [watch.Drop("all workloads", 0.98, 0.0, 0)]
    assert watch.drops(before, [S("a/b", 0, None), S("a/c", 0, None)]) != []
    # Meshing a destination moves its calls from the caller's row to its own.
    assert watch.drops(before, [S("a/b", 0, None), S("a/d", 100, 0.99)]) == []


def test_a_workload_still_recovering_is_judged_from_its_recent_level() -> None:
    long = watch.baseline([S("a/web", 600, 0.86), S("a/emoji", 300, 1.0)])
    # web's last window still holds an earlier incident's tail; emoji's is as good as ever.
    level = watch.levels(long, [S("a/web", 170, 0.68), S("a/emoji", 150, 1.0), S("a/x", 3, 0.0)])
    assert level == {"a/web": S("a/web", 170, 0.68), "a/emoji": S("a/emoji", 300, 1.0)}
    # The next step is not blamed for the tail, and a real drop is still seen.
    assert watch.drops(level, [S("a/web", 170, 0.60)]) == []
    assert watch.drops(level, [S("a/web", 170, 0.30)]) == [watch.Drop("a/web", 0.68, 0.30, 170)]


class FakeCluster:
    """Objects by key; rollouts finish after `rollout_polls` polls."""

    where = "fake"

    def __init__(self, rollout_polls: int = 2) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any] | None] = {}
        self.writes: list[str] = []
        self.rollout_polls = rollout_polls
        self.polls = 0

    def objects_list(self) -> list[dict[str, Any]]:
        return [o for o in self.objects.values() if o]

    def apply(self, changes: Sequence[Change]) -> list[str]:
        for c in changes:
            self.objects[(c.kind, c.namespace, c.name)] = c.after
            self.writes.append(f"{c.kind}/{c.name}={'gone' if c.after is None else c.after['v']}")
        self.polls = 0
        return [c.summary for c in changes]

    def rolled_out(self, kind: str, namespace: str, name: str) -> bool:
        self.polls += 1
        return self.polls > self.rollout_polls


def a_step() -> Step:
    dep = {"kind": "Deployment", "metadata": {"name": "web"}}
    return Step("mesh-namespaces", "t", "todo", changes=[
        Change("Deployment", "emojivoto", "web", {**dep, "v": "old"}, {**dep, "v": "new"},
               "restart web")])  # fmt: skip


def settings() -> runner.Settings:
    return runner.Settings(watch_s=3, poll_s=0, rollout_timeout_s=30)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.5
        return self.t


def test_a_step_that_holds_the_rates_stays() -> None:
    cluster = FakeCluster()
    samples = lambda window: [S("emojivoto/web", 100, 0.86)]  # noqa: E731
    said: list[str] = []
    out = runner.run(a_step(), backend=cluster, sample=samples, settings=settings(),
                     echo=said.append, clock=Clock())  # fmt: skip
    assert not out.rolled_back and out.drops == []
    assert cluster.writes == ["Deployment/web=new"]
    assert said[-1] == "step mesh-namespaces done: no workload's success rate dropped"


def test_a_step_that_drops_a_rate_is_written_back() -> None:
    cluster = FakeCluster()
    calls = iter([[S("emojivoto/web", 600, 0.86)]] + [[S("emojivoto/web", 100, 0.86)]] * 2)

    def samples(window: int) -> list[watch.Sample]:
        return next(calls, [S("emojivoto/web", 100, 0.10)])

    said: list[str] = []
    out = runner.run(a_step(), backend=cluster, sample=samples, settings=settings(),
                     echo=said.append, clock=Clock())  # fmt: skip
    assert out.rolled_back
    assert out.drops == [watch.Drop("emojivoto/web", 0.86, 0.10, 100)]
    assert cluster.writes == ["Deployment/web=new", "Deployment/web=old"]
    assert out.detected_s is not None and out.undone_s is not None and out.restored_s is not None
    assert out.detected_s <= out.undone_s <= out.restored_s
    assert any(line.startswith("dropped: emojivoto/web: success rate 10.0%") for line in said)


def test_a_step_that_never_rolls_out_is_written_back() -> None:
    cluster = FakeCluster(rollout_polls=10**9)
    samples = lambda window: [S("emojivoto/web", 100, 0.86)]  # noqa: E731
    out = runner.run(a_step(), backend=cluster, sample=samples, settings=settings(),
                     echo=lambda line: None, clock=Clock())  # fmt: skip
    assert out.rolled_back and out.not_rolled_out == ["deployment/web -n emojivoto"]
    assert cluster.writes == ["Deployment/web=new", "Deployment/web=old"]
