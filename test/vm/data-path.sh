#!/bin/sh
# Runs inside a test VM: test/vm/run-in-vm.sh KVER test/vm/data-path.sh
#
# The data path as an operator drives it: `ploop-csi blockd` and the `ploop-csi device` /
# `ploop-csi image` commands (data-path.mjs): xfs on a device, durability across detach and
# attach, fstrim and compaction, online grow, online snapshot and merge under writes, blockd
# restarted (SIGTERM and SIGKILL) during O_DIRECT writes, corrupted images refused at attach.
# The pool is an ext4 file system on a loop device in the VM's memory. Needs the host's build.
# Logs and data-path.json go to the results share. Exit status: 0 when every step passed.
set -u
guest_name=data-path
# shellcheck source=test/vm/guest.sh
. "$(dirname "$0")/guest.sh"
# shellcheck disable=SC2119 # nothing beyond what every suite needs
guest_need_build
say "kernel $(uname -r)"
guest_shared_mounts
guest_pool 1G
cd "$repo" || exit 1

. "$repo/test/vm/watchdog.sh"
node test/vm/data-path.mjs "$work" &
node_pid=$!
vm_watchdog "$node_pid" data-path &
watchdog_pid=$!
wait "$node_pid"
rc=$?
kill "$watchdog_pid" 2>/dev/null
say "data-path.mjs exited $rc after $(since "$t_start")s"

dmesg >"$results/data-path-dmesg.txt" 2>&1
umount "$work/mnt" 2>/dev/null
umount "$work/pool" 2>/dev/null
rm -rf "$work"
say "result: $([ "$rc" -eq 0 ] && echo ok || echo FAILED)"
exit "$rc"
