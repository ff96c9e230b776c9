"""The nodemesh command line."""
