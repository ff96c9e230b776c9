"""Enrolment: which pod attachments have nodemesh rules and listeners, and making it so.

Requests from the CNI plugin (add, del, check, gc), changes in the destination table (a
namespace meshed or un-meshed), the agent's start (state file, running pods it never saw) and a
periodic sweep (namespaces gone while nobody said so) all end up here. Work on one attachment is
serialised by its lock; different pods proceed concurrently (rule writes queue on the one rule
thread). Rules and listeners stay in place when the agent stops: a pod must never run unmeshed.
"""

from __future__ import annotations

from nodeagent.enrol.attachments import (
    AddRequest,
    Listeners,
    NetnsFinder,
    Outcome,
    Rules,
    Store,
    netns_gateways,
    netns_identity,
)
from nodeagent.enrol.following import TableFollowing
from nodeagent.enrol.lifecycle import AgentLifecycle
from nodeagent.enrol.requests import PluginRequests

__all__ = [
    "AddRequest",
    "Enroller",
    "Listeners",
    "NetnsFinder",
    "Outcome",
    "Rules",
    "Store",
    "netns_gateways",
    "netns_identity",
]


class Enroller(PluginRequests, TableFollowing, AgentLifecycle):
    """The node's enrolment: the plugin's requests (enrol.requests), the table's changes
    (enrol.following) and the agent's start-up, sweep and leaving (enrol.lifecycle), over the
    attachments' shared bookkeeping (enrol.attachments)."""
