"""What the agent observes of its traffic, as data: the aggregate, its /metrics rendering, the
telemetry reports built from it, tap subscriptions, and the agent's own load (all sans-io)."""
