"""`nodemesh migrate`: where a cluster stands on the adoption path, and the steps that move it on.

survey (what is there), plan (the steps, as object changes) and watch (when to roll back) are
sans-io: plain functions over Kubernetes-shaped dicts; backends and the CLI do the I/O.
"""
