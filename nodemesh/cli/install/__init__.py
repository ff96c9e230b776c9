"""`nodemesh install` and `nodemesh uninstall`: the manifests for a real cluster."""
