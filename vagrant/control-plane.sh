#!/bin/bash
# The control-plane VM: kubeadm init, Flannel on the private network, and the nodemesh CLI.
# Usage: control-plane.sh NODE_IP KUBEADM_TOKEN
set -euo pipefail
node_ip=$1
token=$2

if [ ! -f /etc/kubernetes/admin.conf ]; then
  kubeadm init --apiserver-advertise-address="${node_ip}" --pod-network-cidr=10.244.0.0/16 \
    --token="${token}" --token-ttl=0 --node-name=cp
fi
mkdir -p /root/.kube /home/vagrant/.kube
cp /etc/kubernetes/admin.conf /root/.kube/config
cp /etc/kubernetes/admin.conf /home/vagrant/.kube/config
chown -R vagrant: /home/vagrant/.kube
export KUBECONFIG=/etc/kubernetes/admin.conf

# Flannel over the private network (eth1), not the NAT interface every VM shares.
curl -fsSL https://github.com/flannel-io/flannel/releases/latest/download/kube-flannel.yml |
  sed 's/- --kube-subnet-mgr/- --kube-subnet-mgr\n        - --iface=eth1/' |
  kubectl apply -f -

# The CLI, from this checkout.
python3 -m venv /opt/nodemesh
/opt/nodemesh/bin/pip install -q /nodemesh
ln -sf /opt/nodemesh/bin/nodemesh /usr/local/bin/nodemesh
