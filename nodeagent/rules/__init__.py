"""nodemesh's nat redirection rules for a pod netns: planned as data, then applied.

`plan`, `model`, `saved` and `diff` are sans-io; `apply` does the blocking netns and iptables
work and `worker` runs it on one dedicated thread for the agent's event loop.
"""

from nodeagent.rules.diff import RuleDiff, diff_plan
from nodeagent.rules.model import NatPlan, NatState, RuleSpec, render_rule
from nodeagent.rules.plan import RedirectSettings, build_plan, parse_ports
from nodeagent.rules.saved import normalise_save, parse_save, render_restore

__all__ = [
    "NatPlan",
    "NatState",
    "RedirectSettings",
    "RuleDiff",
    "RuleSpec",
    "build_plan",
    "diff_plan",
    "normalise_save",
    "parse_ports",
    "parse_save",
    "render_restore",
    "render_rule",
]
