#!/bin/bash
# On the control-plane VM once every node has joined: install nodemesh with the images built
# on the VMs, wait for an agent on every node, then deploy emojivoto in its meshed namespace.
set -euo pipefail
export KUBECONFIG=/etc/kubernetes/admin.conf
kubectl wait --for=condition=Ready node --all --timeout=600s

nodemesh check --pre --kubeconfig "$KUBECONFIG" || true
if ! kubectl get namespace nodemesh >/dev/null 2>&1; then
  nodemesh install --image-pull-policy=Never | kubectl apply -f -
fi
kubectl -n nodemesh rollout status deploy/nodemesh-controlplane --timeout=300s
kubectl -n nodemesh rollout status daemonset/nodemesh-agent --timeout=300s

# Agents first, then the app: pods started after install-cni ran are enrolled by the CNI chain.
# (no pull: its image tag is present on every node, built there by images.sh)
kubectl apply -f /nodemesh/manifests/examples/emojivoto.yml
kubectl -n emojivoto rollout status deploy --timeout=300s
nodemesh check --kubeconfig "$KUBECONFIG"
echo "nodemesh is up: vagrant ssh cp -c 'sudo nodemesh stat deploy -n emojivoto --kubeconfig /etc/kubernetes/admin.conf'"
