"""The data plane: a meshed pod's listeners, outbound and inbound connections, the tunnel,
relays, DNS, routing and balancing."""
