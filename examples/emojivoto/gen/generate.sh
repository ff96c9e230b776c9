#!/usr/bin/env bash
# Regenerates the gRPC stubs in this folder from ../proto/*.proto. Run from anywhere.
#
# protoc is run with `-I examples` on `emojivoto/proto/<name>.proto`, so each descriptor is
# registered under a unique file name ("emojivoto/proto/emoji.proto") in protobuf's global pool.
# protoc writes the modules next to their proto path; we move them into gen/ and point the one
# import inside each *_pb2_grpc.py at the package (`from emojivoto.gen import x_pb2`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

cd "$repo"
for proto in examples/emojivoto/proto/*.proto; do
    name="$(basename "$proto" .proto)"
    "$python" -m grpc_tools.protoc -I examples \
        --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
        "emojivoto/proto/$name.proto"
    mv "$out/emojivoto/proto/${name}_pb2.py" "$out/emojivoto/proto/${name}_pb2.pyi" "$here/"
    sed -e "s/^from emojivoto\.proto import ${name}_pb2 as/from emojivoto.gen import ${name}_pb2 as/" \
        "$out/emojivoto/proto/${name}_pb2_grpc.py" >"$here/${name}_pb2_grpc.py"
done
echo "generate.sh: wrote $(ls "$here"/*_pb2*.py* | wc -l) files in $here"
