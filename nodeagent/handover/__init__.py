"""Serving across the agent's own restart: the socket hand-over, the socket keeper and the
state kept on the node."""
