"""nodemesh's netfilter rules for a pod netns (nat redirection, strict UDP, IPv6 closed):
planned as data, then applied.

`plan`, `model`, `saved` and `diff` are sans-io; `apply` does the blocking netns and iptables
work and `worker` runs it on one dedicated thread for the agent's event loop.
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
