#!/usr/bin/env bash
# The VM part of `npm run bench`: fio on a ploop/ublk device vs the kernel loop device over a raw
# file, in one VM (Debian's newest 7.x kernel under qemu), printed as a table of ratios.
# The VM runs under TCG emulation unless KVM is usable: the figures are labelled accordingly
# and say nothing about bare-metal speed, only how the two data paths compare in the same VM.
#
#   bench/vm.sh [--json]     needs root or sudo and the Debian archive (as scripts/test-vm.sh)
#
# Environment: PLOOP_CSI_BENCH_VM_KERNEL (default 7), PLOOP_CSI_BENCH_VM_SIZE (384M),
# PLOOP_CSI_BENCH_VM_RUNTIME (seconds per pass of a random row, 5), PLOOP_CSI_BENCH_VM_PASSES
# (passes per row, 4), PLOOP_CSI_BENCH_VM_QUEUES (ublk queues per device, 1),
# PLOOP_CSI_BENCH_VM_FS (the pool's file system, holding the images and loop's raw file: ext4 or
# xfs, default ext4),
# PLOOP_CSI_BENCH_VM_CLOCK (under TCG, what the guest's clock counts: `instructions`, the
# default, or `host`, see below), PLOOP_CSI_SKIP_BUILD=1, PLOOP_CSI_VM_CPU (qemu's CPU model
# under TCG, default `max,-erms`, see below). The VM gets no environment from here: the
# settings travel in bench.env in the results share.
#
# Why `-erms` under TCG: with ERMS the guest kernel copies to and from user memory with
# `rep movsb`, which TCG emulates a byte at a time; without it the kernel uses `rep movsq`. A
# cached 4 KiB read took 22-24 µs in the VM with ERMS and 6.4-6.7 µs without (512 B: 7.5-7.9 and
# 4.1-4.3; fio.sh measures it in every run). Hardware runs `rep movsb` at full speed, so the
# artifact would charge the ublk server, which copies small requests' data to and from user
# memory, a price no node pays, while loop's copies stay in the kernel.
#
# Why the guest's clock counts instructions under TCG (qemu `-icount shift=0,sleep=off`: each
# executed instruction is 1 ns of guest time, an idle VM skips ahead to its next timer): with the
# host's clock the emulated VM's speed moved by up to half from one pass to the next (the host's
# load, the emulator's translation cache), so a row's ratio spread over 0.70-0.82 run to run,
# and it weighed the two data paths by what they cost the emulator rather than by the work they
# do. Each switch between two processes' address spaces makes TCG drop its whole software TLB
# and walk the page tables again for every page touched next; the ublk server is such a
# process, loop's workers are kernel threads that borrow the address space they find. Counted in
# instructions, the 4 KiB random rows repeat to within 1-3 % pass to pass. `host` keeps the
# host's clock (as KVM always does); the README gives both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

json=0
[ "${1:-}" = --json ] && json=1
kernel=${PLOOP_CSI_BENCH_VM_KERNEL:-7}
case ${PLOOP_CSI_BENCH_VM_PASSES:-4} in
  '' | *[!0-9]* | 0) echo "bench/vm.sh: PLOOP_CSI_BENCH_VM_PASSES must be a whole number ≥ 1" >&2; exit 2 ;;
esac
case ${PLOOP_CSI_BENCH_VM_CLOCK:-instructions} in
  instructions) icount=shift=0,sleep=off ;;
  host) icount='' ;;
  *) echo "bench/vm.sh: PLOOP_CSI_BENCH_VM_CLOCK must be instructions or host" >&2; exit 2 ;;
esac
out=$(realpath -m .cache/vm/bench)

if ! command -v fio >/dev/null 2>&1; then
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends fio >&2 ||
    { echo "bench/vm.sh: cannot install fio" >&2; exit 1; }
fi
test/vm/fetch-kernels.sh "$kernel" >&2
if [ "${PLOOP_CSI_SKIP_BUILD:-0}" != 1 ]; then
  npm run build >&2
  npm run build:native >&2
fi
rm -rf "$out" && mkdir -p "$out"
for v in SIZE RUNTIME PASSES QUEUES FS; do
  name=PLOOP_CSI_BENCH_VM_$v
  [ -z "${!name:-}" ] || printf '%s=%q\n' "$name" "${!name}" >>"$out/bench.env"
done
PLOOP_CSI_VM_ICOUNT=$icount PLOOP_CSI_VM_CPU=${PLOOP_CSI_VM_CPU:-max,-erms} PLOOP_CSI_VM_QUIET=1 PLOOP_CSI_VM_TIMEOUT=${PLOOP_CSI_VM_TIMEOUT:-1800} PLOOP_CSI_VM_MEM=${PLOOP_CSI_VM_MEM:-4096} \
  test/vm/run-in-vm.sh "$kernel" bench/vm/fio.sh "$out" >"$out.harness.log" 2>&1 || {
  cat "$out.harness.log" >&2
  echo "bench/vm.sh: the VM benchmark failed; console: $out/console.log" >&2
  tail -n 30 "$out/console.log" >&2 || true
  exit 1
}
cat "$out.harness.log" >&2
accel=$(grep -o 'booting [^ ]* ([a-z]*' "$out.harness.log" | awk -F'(' '{ print $2 }' | tail -n 1)
# The model that booted, as the harness names it (KVM runs name none: they use the host's).
cpu=$(sed -n 's/.*, cpu \(.*\), [0-9]* CPUs, .*/\1/p' "$out.harness.log" | tail -n 1)
clock=host
grep -q '^\[vm\] booting .*, icount ' "$out.harness.log" && clock=instructions
node bench/vm/report.mjs "$out" "${accel:-tcg}" "$json" "${cpu:-host}" "$clock"
