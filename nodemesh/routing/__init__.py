"""Mesh routing: Gateway API HTTPRoute / GRPCRoute attached to Services (GAMMA)."""
