"""nodemesh-ingress: serves Ingress objects of class `nodemesh` from a meshed Deployment."""
