"""The node's record of meshed namespaces, kept for nodemesh-cni while the agent is away.

When the agent does not answer, the plugin holds a pod only if its namespace is in this file
(nodemesh_cni.runfiles); every other pod starts. The agent knows meshed namespaces from the
control plane's table: this node's pods and every Service endpoint carry a `meshed` flag. A
meshed namespace with no pod anywhere yet is not in it; its first pod, created while the agent
is away, starts unmeshed and is adopted when the agent is back (Enroller.adopt).
"""

from __future__ import annotations

import logging
from pathlib import Path

from nodemesh_cni.runfiles import MESHED_FILE, render_meshed, write_atomically

from nodeagent.upstream.table import DestinationTable

log = logging.getLogger(__name__)


def meshed_namespaces(table: DestinationTable) -> frozenset[str]:
    names = {info.key.namespace for info in table.pods.values() if info.mesh.meshed}
    for service in table.services.values():
        names.update(e.pod.namespace for e in service.endpoints if e.meshed and e.pod)
    return frozenset(names)


class MeshedRecord:
    """Writes the file (atomically) whenever the set of meshed namespaces changes."""

    def __init__(self, run_dir: Path, *, node: str) -> None:
        self.path = Path(run_dir) / MESHED_FILE
        self.node = node
        self._written: frozenset[str] | None = None

    def update(self, table: DestinationTable) -> None:
        if not table.synced:
            return  # an empty table says nothing about namespaces: keep the last record
        names = meshed_namespaces(table)
        if names == self._written:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, render_meshed(names, node=self.node))
        except OSError as exc:
            log.error("cannot record meshed namespaces in %s: %s", self.path, exc)
            return
        self._written = names
        log.info("meshed namespaces: %s", ", ".join(sorted(names)) or "none")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._written = None
