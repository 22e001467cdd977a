#!/bin/sh
# Runs inside a test VM (test/vm/run-in-vm.sh KVER test/vm/probe-ublk.sh): checks that the
# harness gives a usable environment and writes a report to the results share.
#
# Checked: the kernel has ublk (/dev/ublk-control, created by the ublk_drv module the init
# loaded), Node.js from the host root starts, and a loop device can be formatted with ext4 and
# xfs and mounted. Nothing is loaded here; the init already loaded every module.
# Exit status: 0 when everything works, 1 otherwise.

results=${PLOOP_CSI_VM_RESULTS:-/tmp}
report=$results/probe-ublk.txt
failed=0

now() { cut -d' ' -f1 /proc/uptime; }
say() { echo "$*" | tee -a "$report"; }
check() { # NAME COMMAND...
  name=$1
  shift
  t0=$(now)
  if out=$("$@" 2>&1); then
    say "ok   $name ($(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')s)${out:+: $out}"
  else
    say "FAIL $name: $out"
    failed=1
  fi
}

: >"$report"
say "kernel: $(uname -r)"
say "cpus: $(nproc), memory: $(awk '/MemTotal/ { print $2 " kB" }' /proc/meminfo)"
check "/dev/ublk-control" test -c /dev/ublk-control
check "ublk_drv loaded" grep -q '^ublk_drv ' /proc/modules
check "node --version" node --version

img=/tmp/probe-ublk.img
# shellcheck disable=SC2317 # invoked through check
loop_fs() { # FSTYPE MKFS...
  fstype=$1
  shift
  truncate -s 320M "$img" &&
    dev=$(losetup -f --show "$img") &&
    "$@" "$dev" >/dev/null &&
    mkdir -p /tmp/probe-mnt &&
    mount -t "$fstype" "$dev" /tmp/probe-mnt &&
    echo hello >/tmp/probe-mnt/hello &&
    umount /tmp/probe-mnt &&
    losetup -d "$dev" &&
    rm -f "$img" &&
    echo "$dev"
}
check "mkfs.ext4 + mount on a loop device" loop_fs ext4 mkfs.ext4 -q
check "mkfs.xfs + mount on a loop device" loop_fs xfs mkfs.xfs -q

say "result: $([ "$failed" -eq 0 ] && echo ok || echo FAILED)"
exit "$failed"
