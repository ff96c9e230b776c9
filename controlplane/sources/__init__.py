"""Sources of Kubernetes-shaped objects: the API server (`kube`) or the lab's files (`local`)."""
