#!/bin/sh
# Regenerate the Python stubs of every proto in nodemesh/api (run from anywhere).
set -eu
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
for proto in nodemesh/api/*.proto; do
    "$PY" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. "$proto"
done
