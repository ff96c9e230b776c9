"""nodemesh's netfilter rules for a pod netns (nat redirection, strict UDP, IPv6 closed, the
transparent-return mangle rules): planned as data, then applied through one path.

`plan`, `model`, `saved`, `diff` and `restore` are sans-io: plan -> diff against the tables as
one save per family shows them -> one restore transaction per family, as text. `apply` runs the
save and restore tools in the pod's netns (`sync`, with a simulate mode) and `worker` runs that
on one dedicated thread for the agent's event loop.
"""

from nodeagent.rules.diff import RuleDiff, diff_plan
from nodeagent.rules.model import NatPlan, NatState, PodPlan, RuleSpec, render_rule
from nodeagent.rules.plan import RedirectSettings, build_plan, build_pod_plan, parse_ports
from nodeagent.rules.saved import normalise_save, parse_save, render_pod_plan, render_restore

__all__ = [
    "NatPlan",
    "NatState",
    "PodPlan",
    "RedirectSettings",
    "RuleDiff",
    "RuleSpec",
    "build_plan",
    "build_pod_plan",
    "diff_plan",
    "normalise_save",
    "parse_ports",
    "parse_save",
    "render_pod_plan",
    "render_restore",
    "render_rule",
]
