"""The agent's L7 path: HTTP terminated per request (routes, per-request balancing, retries)."""
