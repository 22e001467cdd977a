#!/bin/sh
# Runs inside a test VM: test/vm/run-in-vm.sh KVER test/vm/suite.sh
#
# Every kernel-level suite in one boot, one after the other: the native engine (native-smoke.sh),
# the data path through blockd and the CLI (data-path.sh), and the CSI node service
# (csi-node.sh). Each works below /tmp/<suite>, which is removed before the next starts so the
# VM's memory holds one pool at a time. The outcome of each is appended to suites.txt in the
# results share. Exit status: 0 when every suite passed.
set -u
dir=$(cd "$(dirname "$0")" && pwd)
results=${PLOOP_CSI_VM_RESULTS:-/tmp}
rc=0
for s in ${PLOOP_CSI_VM_SUITES:-native-smoke data-path csi-node}; do
  t=$(cut -d' ' -f1 /proc/uptime)
  echo "[suite] == $s"
  "$dir/$s.sh"
  r=$?
  secs=$(awk -v a="$t" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.0f", b - a }')
  echo "$s $([ "$r" -eq 0 ] && echo ok || echo "FAILED($r)") ${secs}s" >>"$results/suites.txt"
  echo "[suite] == $s: exit $r after ${secs}s"
  [ "$r" -eq 0 ] || rc=1
  # Whatever the suite left mounted or written goes before the next one starts.
  grep -o " /tmp/${s}[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "/tmp/$s"
done
exit "$rc"
