"""nodemesh: a service mesh for Kubernetes with one proxy per node."""
