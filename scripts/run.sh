#!/usr/bin/env bash
# Install dependencies, build, and run ploop-csi with a pool directory in ./pool
# (override with POOL_DIR=/some/dir).
#
# Starts the CSI server when this version has one. Otherwise it says so and
# shows the offline image tool working on a demo image in the pool.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if ((node_major < 20)); then
  echo "run: Node.js >= 20 is required (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund
else
  npm install --no-audit --no-fund
fi
npm run build

POOL_DIR="${POOL_DIR:-./pool}"
mkdir -p "$POOL_DIR"
pool_abs="$(cd "$POOL_DIR" && pwd)"

cli=(node dist/src/cli/main.js)

if "${cli[@]}" csi --help >/dev/null 2>&1; then
  exec "${cli[@]}" csi \
    --endpoint "unix://$pool_abs/csi.sock" \
    --node-id "$(hostname)" \
    --pool "$POOL_DIR"
fi

echo "run: the CSI server is not available in this version of ploop-csi; the offline image tool is (see: ploop-csi image --help)."

demo="$POOL_DIR/demo/DiskDescriptor.xml"
if [[ ! -e "$demo" ]]; then
  mkdir -p "$POOL_DIR/demo"
  echo "+ ploop-csi image create $demo --size 1G"
  "${cli[@]}" image create "$demo" --size 1G
fi
echo "+ ploop-csi image info $demo"
"${cli[@]}" image info "$demo"
