#!/bin/bash
# Every VM: containerd, kubeadm/kubelet/kubectl, the kernel settings Kubernetes needs, and the
# kubelet pinned to the private network's address. Usage: node.sh NODE_IP K8S_MINOR
set -euo pipefail
node_ip=$1
minor=$2
export DEBIAN_FRONTEND=noninteractive

swapoff -a
sed -i '/\sswap\s/d' /etc/fstab
cat >/etc/modules-load.d/k8s.conf <<CONF
overlay
br_netfilter
xt_REDIRECT
CONF
modprobe overlay
modprobe br_netfilter
modprobe xt_REDIRECT
cat >/etc/sysctl.d/k8s.conf <<CONF
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
CONF
sysctl --system >/dev/null

apt-get update -q
apt-get install -y -q apt-transport-https ca-certificates curl gpg containerd python3 \
  python3-venv iptables docker.io
mkdir -p /etc/containerd
containerd config default >/etc/containerd/config.toml
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
systemctl restart containerd

install -d -m 0755 /etc/apt/keyrings
curl -fsSL "https://pkgs.k8s.io/core:/stable:/v${minor}/deb/Release.key" |
  gpg --dearmor --yes -o /etc/apt/keyrings/kubernetes.gpg
echo "deb [signed-by=/etc/apt/keyrings/kubernetes.gpg] https://pkgs.k8s.io/core:/stable:/v${minor}/deb/ /" \
  >/etc/apt/sources.list.d/kubernetes.list
apt-get update -q
apt-get install -y -q kubelet kubeadm kubectl
apt-mark hold kubelet kubeadm kubectl
echo "KUBELET_EXTRA_ARGS=--node-ip=${node_ip}" >/etc/default/kubelet
systemctl enable --now kubelet
