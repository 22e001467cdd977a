#!/bin/sh
# Runs inside a test VM: test/vm/run-in-vm.sh KVER test/vm/csi-node.sh
#
# The CSI node service end to end against the real blockd and ublk: csi-node.mjs drives the
# whole lifecycle (create, stage, publish, data, stats, expand, online snapshot, restore,
# blockd killed with SIGKILL while volumes are published, unpublish, unstage, delete) for ext4,
# xfs and raw block volumes over gRPC. The pool is an ext4 file system on a loop device in the
# VM's memory. Needs the host's build: `npx node-gyp rebuild` and `npx tsc -p .`.
# Logs, csi-node.json and dmesg go to the results share. Exit status: 0 when every step passed.
set -u
repo=$(cd "$(dirname "$0")/../.." && pwd)
results=${PLOOP_CSI_VM_RESULTS:-/tmp}
work=/tmp/csi-node
now() { cut -d' ' -f1 /proc/uptime; }
say() { echo "[csi-node] $*"; }
t_start=$(now)

for f in "$repo/build/Release/ploop_ublk.node" "$repo/dist/src/csi/node.js" "$repo/dist/src/cli/main.js"; do
  [ -f "$f" ] || { say "missing $f: build on the host first (npx node-gyp rebuild; npx tsc -p .)"; exit 1; }
done
say "kernel $(uname -r)"

# As on a systemd host (and as kubelet requires for its directory), mounts are shared: blockd,
# in a slave mount namespace, then sees volumes unmounted here go away in its namespace too.
mount --make-rshared / || say "warning: cannot make / shared"
rm -rf "$work" && mkdir -p "$work/pool" || exit 1
truncate -s 2G "$work/pool.img" && mkfs.ext4 -q "$work/pool.img" && mount -o loop "$work/pool.img" "$work/pool" || {
  say "could not set up the ext4 pool"
  exit 1
}
cd "$repo" || exit 1

node test/vm/csi-node.mjs "$work"
rc=$?
say "csi-node.mjs exited $rc after $(awk -v a="$t_start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')s"

dmesg >"$results/csi-node-dmesg.txt" 2>&1
grep -E '/tmp/csi-node|ublk' /proc/self/mountinfo >"$results/csi-node-mounts-left.txt" 2>&1
umount "$work/pool" 2>/dev/null
say "result: $([ "$rc" -eq 0 ] && echo ok || echo FAILED)"
exit "$rc"
