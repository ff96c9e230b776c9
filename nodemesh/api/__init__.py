"""Protocol buffers and generated gRPC stubs shared by the agent, control plane and CLI."""
