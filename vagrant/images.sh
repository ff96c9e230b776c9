#!/bin/bash
# Every VM: build the nodemesh and emojivoto images from the synced checkout with Docker, then
# hand them to containerd's k8s.io namespace, where the kubelet looks for them.
set -euo pipefail
cd /nodemesh
version=$(python3 -c 'import re; print(re.search(r"__version__ = \"(.+)\"", open("nodemesh/version.py").read())[1])')
registry=ghcr.io/nodemesh
for image in agent controlplane dashboard; do
  docker build -q -f "images/${image}.Dockerfile" -t "${registry}/${image}:${version}" .
done
docker build -q -f examples/emojivoto/Dockerfile -t "${registry}/emojivoto:${version}" .
docker save "${registry}/agent:${version}" "${registry}/controlplane:${version}" \
  "${registry}/dashboard:${version}" "${registry}/emojivoto:${version}" |
  ctr -n k8s.io images import -
