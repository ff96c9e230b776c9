"""Generated gRPC stubs for the emojivoto services (regenerate with generate.sh)."""
