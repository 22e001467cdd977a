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
guest_name=csi-node
# shellcheck source=test/vm/guest.sh
. "$(dirname "$0")/guest.sh"
guest_need_build dist/src/csi/node.js
say "kernel $(uname -r)"
guest_shared_mounts
guest_pool 2G
cd "$repo" || exit 1

node test/vm/csi-node.mjs "$work"
rc=$?
say "csi-node.mjs exited $rc after $(since "$t_start")s"

dmesg >"$results/csi-node-dmesg.txt" 2>&1
grep -E '/tmp/csi-node|ublk' /proc/self/mountinfo >"$results/csi-node-mounts-left.txt" 2>&1
umount "$work/pool" 2>/dev/null
say "result: $([ "$rc" -eq 0 ] && echo ok || echo FAILED)"
exit "$rc"
