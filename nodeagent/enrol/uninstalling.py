"""The agent's uninstall path: install-cni raises a flag in the run dir, the agent un-meshes.

install-cni decides whether nodemesh is leaving the node (its DaemonSet is gone or going, see
nodemesh_cni.owner) or was told so by hand (`python3 -m nodemesh_cni.install uninstall`); the
agent alone can take the redirect rules out of running pods. So on the flag the agent removes
every pod's rules, closes their listeners, answers further ADDs "not meshed", deletes its state
file and the meshed-namespaces record, and removes the flag to say it is done. Distinct from a
plain SIGTERM (restart, rollout, hand-over), which leaves rules in place so no pod runs unmeshed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from nodemesh_cni.runfiles import UNINSTALL_FLAG, uninstall_flag_time

from nodeagent.enrol.enrolment import Enroller
from nodeagent.enrol.meshedrecord import MeshedRecord

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
# A flag older than this agent by more than this is a leftover (install-cni killed mid-way):
# never un-mesh a fresh install because of it.
CLOCK_SLACK = 2.0


class UninstallWatch:
    def __init__(
        self,
        run_dir: Path,
        *,
        enroller: Enroller,
        record: MeshedRecord,
        state_file: Path,
        forget_serving: Callable[[], None] = lambda: None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enroller = enroller
        self.record = record
        self.state_file = state_file
        self.forget_serving = forget_serving  # the saved table, certificates and keys
        self.started_at = time.time()
        self.done = asyncio.Event()

    def raised(self) -> bool:
        when = uninstall_flag_time(self.run_dir)
        return when is not None and when >= self.started_at - CLOCK_SLACK

    async def run(self) -> None:
        stale = uninstall_flag_time(self.run_dir)
        if stale is not None and stale < self.started_at - CLOCK_SLACK:
            log.warning("ignoring an old uninstall flag in %s", self.run_dir)
        while not self.done.is_set():
            if self.raised():
                await self.uninstall()
                return
            await asyncio.sleep(POLL_SECONDS)

    async def wait(self, timeout: float) -> bool:
        """At SIGTERM: give install-cni up to `timeout` s to say whether nodemesh is leaving;
        True when it did and the pods are un-meshed."""
        if timeout <= 0 or self.done.is_set():
            return self.done.is_set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.done.is_set():
                return True
            if self.raised():
                await self.uninstall()
                return True
            await asyncio.sleep(POLL_SECONDS)
        return False

    async def uninstall(self) -> None:
        if self.done.is_set():
            return
        log.warning("nodemesh is being uninstalled from this node: un-meshing every pod")
        pods = await self.enroller.unmesh_all()
        self.record.remove()
        self.state_file.unlink(missing_ok=True)
        self.forget_serving()
        self.done.set()
        (self.run_dir / UNINSTALL_FLAG).unlink(missing_ok=True)
        log.warning(
            "un-meshed %d pod(s): %s",
            len(pods),
            ", ".join(f"{k.namespace}/{k.name}" for k in pods) or "none",
        )
