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
repo=$(cd "$(dirname "$0")/../.." && pwd)
results=${PLOOP_CSI_VM_RESULTS:-/tmp}
work=/tmp/data-path
now() { cut -d' ' -f1 /proc/uptime; }
say() { echo "[data-path] $*"; }
t_start=$(now)
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

for f in "$repo/build/Release/ploop_ublk.node" "$repo/dist/src/cli/main.js"; do
  [ -f "$f" ] || { say "missing $f: build on the host first (npm run build; npm run build:native)"; exit 1; }
done
say "kernel $(uname -r)"

# Mounts are shared, as on a systemd host: blockd's slave namespace follows unmounts made here.
mount --make-rshared / || say "warning: cannot make / shared"
rm -rf "$work" && mkdir -p "$work/pool" || exit 1
truncate -s 1G "$work/pool.img" && mkfs.ext4 -q "$work/pool.img" && mount -o loop "$work/pool.img" "$work/pool" || {
  say "could not set up the ext4 pool"
  exit 1
}
cd "$repo" || exit 1

. "$repo/test/vm/watchdog.sh"
node test/vm/data-path.mjs "$work" &
node_pid=$!
vm_watchdog "$node_pid" data-path &
watchdog_pid=$!
wait "$node_pid"
rc=$?
kill "$watchdog_pid" 2>/dev/null
say "data-path.mjs exited $rc after $(awk -v a="$t_start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')s"

dmesg >"$results/data-path-dmesg.txt" 2>&1
umount "$work/mnt" 2>/dev/null
umount "$work/pool" 2>/dev/null
rm -rf "$work"
say "result: $([ "$rc" -eq 0 ] && echo ok || echo FAILED)"
exit "$rc"
