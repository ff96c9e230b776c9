"""The control plane's state in the agent (destination table, certificates) and the clients
of its streams."""
