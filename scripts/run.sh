#!/usr/bin/env bash
# Install dependencies, build, and run ploop-csi with a pool directory in ./pool
# (override with POOL_DIR=/some/dir).
#
# Starts the CSI server on unix://<pool>/csi.sock, with blockd and the node service when this
# machine can serve ublk devices.
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
args=(csi --endpoint "unix://$pool_abs/csi.sock" --node-id "$(hostname)" --pool "$pool_abs")

# The node service needs ublk: blockd (the device daemon) runs beside the CSI server when the
# kernel has ublk_drv and we are root; otherwise the controller side runs alone.
[[ -e /dev/ublk-control ]] || modprobe ublk_drv 2>/dev/null || true
if [[ -e /dev/ublk-control && "$(id -u)" -eq 0 ]] && command -v g++ >/dev/null && [[ -f /usr/include/liburing.h ]]; then
  npm run build:native
  "${cli[@]}" blockd --state-dir "$pool_abs/.blockd" --socket "$pool_abs/blockd.sock" &
  blockd_pid=$!
  trap 'kill "$blockd_pid" 2>/dev/null' EXIT
  args+=(--blockd-socket "$pool_abs/blockd.sock")
  echo "run: blockd started (pid $blockd_pid); serving identity, controller and node services"
else
  echo "run: ublk is not usable here (needs root, ublk_drv, liburing-dev); serving identity and controller only"
fi
"${cli[@]}" "${args[@]}"
