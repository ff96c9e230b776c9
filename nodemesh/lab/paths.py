"""Where a lab keeps its state, and the names of the namespaces it makes."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

RUN_ROOT = Path(os.environ.get("NODEMESH_RUN_DIR", "/run/nodemesh"))
ETC_NETNS = Path("/etc/netns")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")


class LabNameError(ValueError):
    pass


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise LabNameError(
            f"lab name {name!r} must be 1-12 lower-case letters or digits, starting with a letter"
        )
    return name


@dataclass(frozen=True)
class LabPaths:
    name: str

    @property
    def root(self) -> Path:
        return RUN_ROOT / self.name

    @property
    def config(self) -> Path:
        return self.root / "lab.json"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.jsonl"

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def socket(self) -> Path:
        return self.root / "supervisor.sock"

    @property
    def supervisor_log(self) -> Path:
        return self.root / "supervisor.log"

    @property
    def identity(self) -> Path:
        return self.root / "identity"

    @property
    def access(self) -> Path:
        """Who may call the public API: tokens and grants (nodemesh.lab.access), root-only."""
        return self.root / "access"

    def agent_credentials(self, node: str) -> Path:
        """One node agent's token and trust anchor (all its DaemonSet pod may read)."""
        return self.identity / "agents" / node

    def logs(self, namespace: str, pod: str) -> Path:
        return self.root / "logs" / namespace / pod

    @property
    def gone_logs(self) -> Path:
        """Where a deleted pod's logs go (`<namespace>/<pod>/`), the latest GONE_LOGS_KEPT
        pods', until the lab is taken down: what a rollout's replaced pods said is what a
        failed step is read by."""
        return self.root / "logs-gone"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def cni_conf_dir(self, node: str) -> Path:
        return self.node_dir(node) / "etc" / "cni" / "net.d"

    def cni_bin_dir(self, node: str) -> Path:
        return self.node_dir(node) / "opt" / "cni" / "bin"

    def ipam_dir(self, node: str) -> Path:
        """host-local's store, /run/cni/networks as the node sees it (its /run is the node's)."""
        return self.node_dir(node) / "run" / "cni" / "networks"

    def node_run_dir(self, node: str) -> Path:
        """The node's /run (and /var/run)."""
        return self.node_dir(node) / "run"

    def node_netns_dir(self, node: str) -> Path:
        """The node's /run/netns: a bind mount of each of its pods' netns."""
        return self.node_run_dir(node) / "netns"

    def run_dir(self, node: str) -> Path:
        """nodemesh's run dir on the node (/var/run/nodemesh): the agent's CNI socket, state."""
        return self.node_run_dir(node) / "nodemesh"

    def node_log_dir(self, node: str) -> Path:
        return self.node_dir(node) / "var" / "log"

    # Network namespace names all start with "nm-<lab>-" so they are easy to tell apart.
    @property
    def prefix(self) -> str:
        return f"nm-{self.name}-"

    @property
    def underlay_netns(self) -> str:
        return f"{self.prefix}underlay"

    def node_netns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    def pod_netns(self, namespace: str, pod: str) -> str:
        return f"{self.prefix}{namespace}-{pod}"


def existing_labs() -> list[str]:
    if not RUN_ROOT.is_dir():
        return []
    return sorted(p.name for p in RUN_ROOT.iterdir() if (p / "lab.json").exists())
