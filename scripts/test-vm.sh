#!/usr/bin/env bash
# The kernel-level suites: boots each Debian kernel that ships ublk_drv under qemu, once, and
# runs every VM suite in it (test/vm/suite.sh: the native engine, the data path through blockd
# and the CLI, the CSI node service).
#
#   scripts/test-vm.sh [SERIES...]        SERIES: 7 and/or 6.12 (default: both)
#
# Needs root (or sudo), qemu-system-x86 and the Debian archive: test/vm/fetch-kernels.sh
# installs and downloads what is missing. When that cannot be done the reason is printed; with
# CI set (as in .ci/run) the run then fails, elsewhere the VM suites are reported as SKIPPED.
# PLOOP_CSI_SKIP_BUILD=1 skips the TypeScript and native builds (scripts/test.sh made them).
# Results (serial console, logs, JSON summaries) are kept in $PLOOP_CSI_VM_OUT/<series>
# (default .cache/vm/last).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

kernels=("$@")
[ ${#kernels[@]} -gt 0 ] || kernels=(7 6.12)
out=${PLOOP_CSI_VM_OUT:-.cache/vm/last}

unavailable() {
  if [ -n "${CI:-}" ]; then
    echo "test-vm: FAILED: $1" >&2
    exit 1
  fi
  echo "test-vm: SKIPPED: $1" >&2
  echo "test-vm: (the kernel-level suites are required in CI; see test/vm/README.md)" >&2
  exit 0
}

if [ "$(uname -m)" != x86_64 ]; then unavailable "the VM harness needs an x86_64 host"; fi
if [ "$(id -u)" -ne 0 ] && ! sudo -n true 2>/dev/null; then
  unavailable "the VM harness needs root or password-less sudo (to install qemu and load loop devices in the VM)"
fi
test/vm/fetch-kernels.sh "${kernels[@]}" ||
  unavailable "could not install qemu or fetch the kernels (is the Debian archive reachable?)"

if [ "${PLOOP_CSI_SKIP_BUILD:-0}" != 1 ]; then
  npm run build
  npm run build:native
fi

# One boot per kernel runs every suite; 30 minutes is far beyond what they take under TCG.
export PLOOP_CSI_VM_TIMEOUT="${PLOOP_CSI_VM_TIMEOUT:-1800}"
export PLOOP_CSI_VM_QUIET=1
# Each kernel boots once; with two or more cores the VMs run side by side (each emulated CPU
# thread takes one host core), so the suites take about as long as the slower kernel alone.
parallel=${PLOOP_CSI_VM_PARALLEL:-$([ "$(nproc)" -ge 2 ] && echo 1 || echo 0)}

run_kernel() { # SERIES DIR
  local k=$1 dir=$2 start=$SECONDS rc=0
  rm -rf "$dir" && mkdir -p "$dir"
  test/vm/run-in-vm.sh "$k" test/vm/suite.sh "$dir" >"$dir.harness.log" 2>&1 || rc=$?
  echo "$rc $((SECONDS - start))" >"$dir.outcome"
}

pids=()
for k in "${kernels[@]}"; do
  dir=$(realpath -m "$out/$k")
  echo "== VM suites on Linux $k (results in $dir)"
  if [ "$parallel" = 1 ]; then
    run_kernel "$k" "$dir" &
    pids+=($!)
  else
    run_kernel "$k" "$dir"
  fi
done
for p in "${pids[@]}"; do wait "$p" || true; done

status=0
for k in "${kernels[@]}"; do
  dir=$(realpath -m "$out/$k")
  read -r rc secs <"$dir.outcome" 2>/dev/null || { rc=125; secs="?"; }
  cat "$dir.harness.log" 2>/dev/null || true
  sed "s/^/   Linux $k: /" "$dir/suites.txt" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    status=1
    echo "== Linux $k: FAILED (exit $rc) after ${secs}s; last lines of the console:"
    tail -n 80 "$dir/console.log" 2>/dev/null || true
  else
    echo "== Linux $k: ok after ${secs}s"
  fi
done
exit "$status"
