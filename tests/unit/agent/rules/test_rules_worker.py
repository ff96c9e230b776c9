"""RuleWorker's contract that does not need root: errors come back to the awaiting caller."""

from __future__ import annotations

import pytest

from nodeagent.rules import RedirectSettings, build_pod_plan
from nodeagent.rules.apply import RulesError
from nodeagent.rules.worker import RuleWorker


async def test_missing_netns_is_an_error_for_the_caller_not_the_worker() -> None:
    async with RuleWorker() as worker:
        with pytest.raises(RulesError):
            await worker.apply(
                "/run/netns/nmtest-rules-does-not-exist", build_pod_plan(RedirectSettings())
            )
        with pytest.raises(RulesError):
            await worker.inspect("nmtest-rules-does-not-exist")


async def test_closed_worker_refuses_work() -> None:
    worker = RuleWorker()
    await worker.aclose()
    await worker.aclose()  # twice is fine
    with pytest.raises(RuntimeError):
        await worker.remove("nmtest-rules-anything")
