#!/usr/bin/env bash
# Boot a Debian kernel under qemu and run one script in it, chrooted into the host's root.
#
#   test/vm/run-in-vm.sh KVER SCRIPT [RESULTS_DIR]
#
# KVER     kernel to boot: "6.12", "7", or a full version such as "7.3.4+deb13-amd64".
#          A kernel missing from the cache is fetched with fetch-kernels.sh.
# SCRIPT   executable to run inside the VM. It must live on the host's root file system (which
#          the VM sees read-only); not below /tmp, /run, /var/tmp, /root, /proc, /sys or /dev,
#          which the VM replaces with its own. It starts in the current directory (if visible),
#          with PLOOP_CSI_VM=1 and PLOOP_CSI_VM_RESULTS=RESULTS_DIR in its environment.
# RESULTS_DIR  host directory shared writable into the VM at the same path (default: a new
#          $PLOOP_CSI_VM_CACHE/results/<version>.XXXXXX; those older than a day are removed).
#          The serial log is kept there as console.log, the script's exit status as exit-status.
#
# Exits with the script's exit status; 124 when the VM timed out, 125 when it did not report.
# A VM that crashes before the script starts (an emulator fault while booting) is booted once
# more; its log is kept as console.boot-failed.log.
#
# Environment: PLOOP_CSI_VM_TIMEOUT (seconds, default 600), PLOOP_CSI_VM_ACCEL (auto|kvm|tcg,
# default auto: KVM only when a short probe boot works), PLOOP_CSI_VM_MEM (MiB, 2048),
# PLOOP_CSI_VM_SMP (2), PLOOP_CSI_VM_QUIET=1 (do not copy the serial console to stdout),
# PLOOP_CSI_VM_NO_FETCH=1 (never install packages or download kernels),
# PLOOP_CSI_VM_APPEND (extra kernel command line), PLOOP_CSI_VM_TCG_THREAD (multi|single;
# default multi when the host has more cores than the VM has CPUs, else single, which was
# faster on a 2-core host and avoids the cross-vCPU races of multi-threaded TCG),
# PLOOP_CSI_VM_ICOUNT (TCG only: qemu's -icount option, e.g. "shift=0,sleep=off", which makes
# the guest's clock count executed instructions instead of following the host's; needs
# single-threaded TCG).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  usage >&2
  exit 2
fi
selector=$1
script=$2
results=${3:-}

# The harness itself failing (no qemu, no kernel, bad arguments) is reported as 125.
VM_DIE_STATUS=125
vm_timeout=${PLOOP_CSI_VM_TIMEOUT:-600}
accel=${PLOOP_CSI_VM_ACCEL:-auto}
mem=${PLOOP_CSI_VM_MEM:-2048}
smp=${PLOOP_CSI_VM_SMP:-2}
tcg_thread=${PLOOP_CSI_VM_TCG_THREAD:-}
icount=${PLOOP_CSI_VM_ICOUNT:-}
if [ -n "$icount" ]; then
  [ "${tcg_thread:-single}" = single ] || vm_die "PLOOP_CSI_VM_ICOUNT needs single-threaded TCG (PLOOP_CSI_VM_TCG_THREAD=single)"
  tcg_thread=single
fi
if [ -z "$tcg_thread" ]; then
  if [ "$(nproc)" -gt "$smp" ]; then tcg_thread=multi; else tcg_thread=single; fi
fi
case $tcg_thread in
  multi | single) ;;
  *) vm_die "PLOOP_CSI_VM_TCG_THREAD must be multi or single (not '$tcg_thread')" ;;
esac
# --- arguments ------------------------------------------------------------------------------------
no_space() { # WHAT VALUE
  case $2 in
    *[[:space:]]*) vm_die "$1 '$2' contains white space, which the kernel command line cannot carry" ;;
  esac
}
hidden_in_vm() { # PATH: is it below a directory the VM replaces with its own?
  case $1 in
    /tmp | /tmp/* | /run | /run/* | /var/tmp | /var/tmp/* | /root | /root/* | /proc | /proc/* | /sys | /sys/* | /dev | /dev/*) return 0 ;;
  esac
  return 1
}

[ -f "$script" ] || vm_die "script $script not found"
script=$(realpath "$script")
no_space script "$script"
# A script below such a directory (a checkout in /tmp, say) is reached through one more share:
# the repository (or the script's directory) is mounted read-only at its own path in the VM.
share=''
if hidden_in_vm "$script"; then
  share=$(git -C "$(dirname "$script")" rev-parse --show-toplevel 2>/dev/null || dirname "$script")
  share=$(realpath "$share")
  no_space "shared directory" "$share"
  vm_log "$script is below a directory the VM replaces; sharing $share read-only at the same path"
fi
[ -x "$script" ] || vm_log "warning: $script is not executable, it will be run with /bin/sh"

# --- qemu and the kernel --------------------------------------------------------------------------
fetch() { # SERIES...
  if [ "${PLOOP_CSI_VM_NO_FETCH:-0}" = 1 ]; then
    return 1
  fi
  "$VM_DIR/fetch-kernels.sh" "$@" >/dev/null
}

series_of() { # SELECTOR -> the fetch-kernels.sh series that provides it
  case $1 in
    6.12 | 6.12[.+-]*) echo 6.12 ;;
    7 | 7[.+-]*) echo 7 ;;
    *) return 1 ;;
  esac
}

host_tools_ok() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 && command -v cpio >/dev/null 2>&1 &&
    command -v modinfo >/dev/null 2>&1 && { [ -x /bin/busybox ] || [ -x /usr/bin/busybox ]; }
}
if ! host_tools_ok; then
  vm_log "qemu or the initramfs tools are missing; installing them with fetch-kernels.sh"
  fetch --no-kernels 2>&1 | sed 's/^/  /' >&2 || true
  host_tools_ok ||
    vm_die "qemu-system-x86_64, cpio, modinfo (kmod) and a static busybox are needed: apt-get install qemu-system-x86 busybox-static cpio kmod (automatic install failed or PLOOP_CSI_VM_NO_FETCH=1)"
fi

if ! kver=$(vm_resolve_kernel "$selector"); then
  series=$(series_of "$selector") ||
    vm_die "kernel '$selector' is not in $VM_KERNELS and is none of the series fetch-kernels.sh knows (6.12, 7)"
  vm_log "kernel $selector is not cached; fetching the $series series"
  [ "${PLOOP_CSI_VM_NO_FETCH:-0}" != 1 ] ||
    vm_die "kernel '$selector' is not in $VM_KERNELS and PLOOP_CSI_VM_NO_FETCH=1 forbids fetching it (run test/vm/fetch-kernels.sh $series)"
  fetch "$series" || vm_die "could not obtain a $series kernel (see the messages above; Debian's trixie archive must be reachable)"
  kver=$(vm_resolve_kernel "$selector") ||
    vm_die "fetch-kernels.sh found no kernel matching '$selector' (cached: $(vm_cached_kernels | tr '\n' ' '))"
fi
kdir=$VM_KERNELS/$kver
vmlinuz=$(vm_kernel_image "$kdir" "$kver") || vm_die "no vmlinuz in $kdir"
initrd=$VM_INITRAMFS/$kver.gz
"$VM_DIR/build-initramfs.sh" "$kdir" "$initrd" || vm_die "could not build the initramfs for $kver"

# --- results directory -----------------------------------------------------------------------------
if [ -z "$results" ]; then
  mkdir -p "$VM_CACHE/results"
  find "$VM_CACHE/results" -mindepth 1 -maxdepth 1 -type d -mtime +0 -exec rm -rf {} + 2>/dev/null || true
  results=$(mktemp -d "$VM_CACHE/results/$kver.XXXXXX")
  chmod 755 "$results"
fi
mkdir -p "$results"
results=$(realpath "$results")
no_space "results directory" "$results"
rm -f "$results/exit-status" "$results/vm-error" "$results/console.log" "$results/console.boot-failed.log"

cwd=$(pwd -P)
case $cwd in *[[:space:]]*) cwd=/ ;; esac
if hidden_in_vm "$cwd"; then
  case $cwd in "$share" | "$share"/*) [ -n "$share" ] || cwd=/ ;; *) cwd=/ ;; esac
fi

# --- accelerator -------------------------------------------------------------------------------------
tcg_cpu=${PLOOP_CSI_VM_CPU:-max}
qemu_cmd() { # ACCEL CMD RESULTS APPEND...
  local accel=$1 cmd=$2 res=$3 cpu=$tcg_cpu
  shift 3
  [ "$accel" = kvm ] && cpu=host
  local accel_opt=$accel
  [ "$accel" = tcg ] && accel_opt=tcg,thread=$tcg_thread
  printf '%s\0' qemu-system-x86_64 -accel "$accel_opt" -cpu "$cpu" -m "$mem" -smp "$smp" \
    -nodefaults -no-user-config -display none -monitor none -serial stdio -no-reboot \
    -kernel "$vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 quiet ploopcsi.cmd=$cmd ploopcsi.results=$res ploopcsi.cwd=$cwd${share:+ ploopcsi.share=$share} $*" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$res,mount_tag=results,security_model=none,multidevs=remap"
  if [ -n "$share" ]; then
    printf '%s\0' -virtfs "local,path=$share,mount_tag=work,security_model=none,readonly=on,multidevs=remap"
  fi
  if [ -n "$icount" ] && [ "$accel" = tcg ]; then
    printf '%s\0' -icount "$icount"
  fi
}

# KVM is used only when a short boot really works: on nested-virtualisation hosts /dev/kvm can
# exist while guests crash early. The answer is cached per host kernel.
kvm_works() {
  [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
  local cache probe_res status
  cache=$VM_CACHE/kvm-probe-$(uname -r)-$kver
  if [ -f "$cache" ]; then
    [ "$(cat "$cache")" = yes ]
    return
  fi
  probe_res=$(mktemp -d "$VM_CACHE/kvm-probe.XXXXXX")
  vm_log "probing KVM with a short boot"
  local args=()
  mapfile -d '' args < <(qemu_cmd kvm /bin/true "$probe_res")
  timeout --kill-after=5 60 "${args[@]}" </dev/null >"$probe_res/console.log" 2>&1 || true
  status=$(cat "$probe_res/exit-status" 2>/dev/null || true)
  rm -rf "$probe_res"
  if [ "$status" = 0 ]; then
    echo yes >"$cache"
    return 0
  fi
  echo no >"$cache"
  vm_log "KVM is present but a probe boot failed; using TCG"
  return 1
}

case $accel in
  auto) if kvm_works; then accel=kvm; else accel=tcg; fi ;;
  kvm | tcg) ;;
  *) vm_die "PLOOP_CSI_VM_ACCEL must be auto, kvm or tcg (not '$accel')" ;;
esac

# --- boot ------------------------------------------------------------------------------------------
args=()
# shellcheck disable=SC2086 # PLOOP_CSI_VM_APPEND is a list of kernel parameters
mapfile -d '' args < <(qemu_cmd "$accel" "$script" "$results" ${PLOOP_CSI_VM_APPEND:-})
log=$results/console.log
run_vm() {
  local how=$accel
  [ "$accel" = tcg ] && how="tcg $tcg_thread-threaded,${icount:+ icount $icount,} cpu $tcg_cpu"
  vm_log "booting $kver ($how, ${smp} CPUs, ${mem} MiB) to run $script; log: $log"
  start=$(date +%s.%N)
  set +e
  if [ "${PLOOP_CSI_VM_QUIET:-0}" = 1 ]; then
    timeout --kill-after=10 "$vm_timeout" "${args[@]}" </dev/null 2>&1 | tr -d '\r' >"$log"
  else
    timeout --kill-after=10 "$vm_timeout" "${args[@]}" </dev/null 2>&1 | tr -d '\r' | tee "$log"
  fi
  qemu_status=${PIPESTATUS[0]}
  set -e
  elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  started=$(sed -n 's/^ploop-csi-vm: running .* at \([0-9.]*\)s$/\1/p' "$log" | tail -n 1)
  vm_log "$kver: ${elapsed}s in total, command started ${started:-?}s after boot (guest clock, $accel)"
}
crashed() { grep -qE '^(\[ *[0-9.]+\] )?(Kernel panic|Oops|BUG:|general protection fault)' "$log"; }

run_vm
if [ ! -f "$results/exit-status" ] && [ -z "$started" ] && [ "$qemu_status" -ne 124 ] && crashed; then
  vm_log "the kernel crashed while booting: $(grep -m1 -E 'Kernel panic|Oops|BUG:|general protection fault' "$log")"
  vm_log "booting once more (the failed boot's log is $results/console.boot-failed.log)"
  mv "$log" "$results/console.boot-failed.log"
  run_vm
fi

if [ -f "$results/vm-error" ]; then
  vm_log "the VM reported: $(cat "$results/vm-error")"
fi
if [ -f "$results/exit-status" ]; then
  status=$(cat "$results/exit-status")
  case $status in
    '' | *[!0-9]*) vm_die "unreadable exit status '$status' in $results/exit-status" ;;
  esac
  vm_log "$script exited with status $status"
  exit "$status"
fi
if [ "$qemu_status" -eq 124 ] || [ "$qemu_status" -eq 137 ]; then
  vm_log "error: the VM did not finish within ${vm_timeout}s (PLOOP_CSI_VM_TIMEOUT); see $log"
  exit 124
fi
if crashed; then
  vm_die "the VM kernel crashed ($(grep -m1 -E 'Kernel panic|Oops|BUG:|general protection fault' "$log" | sed 's/^\[[ 0-9.]*\] //')); see $log"
fi
vm_die "the VM did not report an exit status (qemu exited with $qemu_status); see $log"
