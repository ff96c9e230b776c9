#!/bin/bash
# A worker VM: join the cluster with the shared bootstrap token.
# Usage: worker.sh CONTROL_PLANE_IP KUBEADM_TOKEN
set -euo pipefail
cp_ip=$1
token=$2
if [ ! -f /etc/kubernetes/kubelet.conf ]; then
  kubeadm join "${cp_ip}:6443" --token="${token}" --discovery-token-unsafe-skip-ca-verification \
    --node-name="$(hostname)"
fi
