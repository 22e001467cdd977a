#!/bin/sh
# Runs inside a test VM: test/vm/run-in-vm.sh KVER test/vm/native-smoke.sh
#
# End-to-end check of the native ublk engine (src/blockdev/native, built with
# `npx node-gyp rebuild`) and its TypeScript binding (built with `npx tsc -p .`): a ploop image is
# created with the project's CLI on an ext4 pool (a loop device in the VM's memory), then
# native-smoke.mjs serves it as /dev/ublkbN (mkfs, mount, files, online snapshot and merge,
# discard/write-zeroes checks, kill -9 of the server and recovery), and qemu-img checks every
# image afterwards. Logs and native-smoke.json go to the results share.
# Exit status: 0 when every step passed.
set -u
guest_name=native-smoke
# shellcheck source=test/vm/guest.sh
. "$(dirname "$0")/guest.sh"
guest_need_build dist/src/blockdev/native.js
say "kernel $(uname -r); io_uring_disabled=$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo n/a)"
guest_pool 768M
cd "$repo" || exit 1

t=$(now)
node dist/src/cli/main.js image create "$work/pool/vol.hds" --size 256M || { say "image create failed"; exit 1; }
say "image create (CLI, one Node start): $(since "$t")s"

# Watchdog: a hung device ends the run with the threads' stacks instead of the VM timeout.
. "$repo/test/vm/watchdog.sh"
t=$(now)
node test/vm/native-smoke.mjs main "$work/pool/vol.hds" "$work" &
node_pid=$!
vm_watchdog "$node_pid" native-smoke &
watchdog_pid=$!
wait "$node_pid"
rc=$?
kill "$watchdog_pid" 2>/dev/null
say "native-smoke.mjs exited $rc after $(since "$t")s"

for img in "$work"/pool/*.hds; do
  [ -f "$img" ] || continue
  if out=$(qemu-img check -f parallels "$img" 2>&1); then
    say "qemu-img check $(basename "$img"): clean"
  else
    say "qemu-img check $(basename "$img") FAILED: $out"
    rc=1
  fi
done
ls -ls "$work/pool" >"$results/native-smoke-pool.txt" 2>&1
dmesg >"$results/native-smoke-dmesg.txt" 2>&1
umount "$work/pool" 2>/dev/null
say "total $(since "$t_start")s; result: $([ "$rc" -eq 0 ] && echo ok || echo FAILED)"
exit "$rc"
