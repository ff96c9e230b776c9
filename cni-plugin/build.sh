#!/bin/sh
# Build the self-contained nodemesh-cni executable: a zipapp of the stdlib-only nodemesh_cni
# package with a "#!/usr/bin/env python3" shebang. Usage: cni-plugin/build.sh [OUTPUT]
# (default: cni-plugin/dist/nodemesh-cni). Needs only python3 (3.9 or later).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/dist/nodemesh-cni"}
python=${PYTHON:-python3}

mkdir -p "$(dirname "$out")"
stage=$(mktemp -d "${TMPDIR:-/tmp}/nodemesh-cni-build.XXXXXX")
# Built next to the output and renamed, so a runtime never executes a half-written file.
tmp="$(dirname "$out")/.nodemesh-cni.$$.tmp"
trap 'rm -rf "$stage" "$tmp"' EXIT

cp -R "$here/nodemesh_cni" "$stage/nodemesh_cni"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
# zipapp's -m template ignores main()'s return value; the runtime needs the exit status. With
# arguments (a runtime passes none) it is install-cni: `nodemesh-cni uninstall ...` on a node.
# Keep in step with MAIN in nodemesh_cni/bundle.py.
cat >"$stage/__main__.py" <<'EOF'
import sys
if len(sys.argv) > 1:
    from nodemesh_cni.install import main as install
    sys.exit(install(sys.argv[1:]))
from nodemesh_cni.plugin import main
sys.exit(main())
EOF
# Bytecode beside each source (zipimport cannot cache): saves compiling on every pod start.
# A different python3 on the node rejects the magic number and compiles the included sources.
"$python" -m compileall -q -b --invalidation-mode unchecked-hash "$stage"

"$python" -m zipapp "$stage" -o "$tmp" -p "/usr/bin/env python3"
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
echo "$out"
