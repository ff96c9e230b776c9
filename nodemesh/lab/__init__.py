"""The local multi-node lab: Kubernetes-shaped pods in network namespaces."""
