"""The ports nodemesh listens on, named once for the agent, control plane, CLI and dashboard."""

from __future__ import annotations

# The agent's listeners inside every meshed pod's network namespace (the pod's rules redirect
# to them; an app must not use these ports itself).
OUTBOUND = 4140  # the pod's outgoing connections
INBOUND = 4141  # plaintext clients from outside the mesh
TUNNEL = 4143  # mTLS from other agents
DNS = 4153  # the pod's DNS (UDP on 127.0.0.1, TCP)
IN_POD = frozenset({OUTBOUND, INBOUND, TUNNEL, DNS})

# The agent on its node (hostNetwork): /metrics, /ready, /live.
AGENT_ADMIN = 4191
# The agent on its node (hostNetwork): router mode, an explicit HTTP proxy (absolute-form
# requests and CONNECT) for apps configured with HTTP_PROXY=<node>:4144.
ROUTER = 4144

# The control plane's Service, and the dashboard's.
DASHBOARD = 8084
PUBLIC_API = 8085  # CLI and dashboard
AGENT_API = 8086  # agents: destinations, identities, telemetry, tap
CONTROLPLANE_ADMIN = 9996  # /metrics, /ready, /live
PROMETHEUS = 9090  # the bundled Prometheus (install --prometheus, lab up --prometheus)

# nodemesh-ingress (install --ingress): its listeners in its pod (the Service maps 80 and 443 to
# them; unprivileged ports, no capability needed) and its /ready, /live, /metrics.
INGRESS_HTTP = 8080
INGRESS_HTTPS = 8443
INGRESS_ADMIN = 9994
