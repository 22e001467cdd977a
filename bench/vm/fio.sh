#!/bin/sh
# Runs inside a test VM (bench/vm.sh boots it): fio on ploop images served through blockd and
# ublk (the default data path, zero copy where the kernel has it, and a second blockd in copy
# mode), and on the kernel loop device over a raw file of the same size, in the same VM and file
# system, one after the other. Rows: 1 MiB sequential write and read, 4 KiB random write and
# read at queue depth 32 (direct I/O, libaio). The backing files start empty, so the sequential
# write also allocates (ploop clusters; ext4 blocks for the raw file), each of its passes on new
# backing files; the other rows then run over fully allocated data. Every row runs in four
# passes (PLOOP_CSI_BENCH_VM_PASSES) that alternate the device order, so that drift in the
# emulated VM's speed (on the host's clock it moves by half from one pass to the next; counted
# in instructions, see bench/vm.sh, by a few per cent) weighs on every device alike. Results:
# fio JSON per row, device and pass in the results share.
set -u
guest_name=bench
# shellcheck source=test/vm/guest.sh
. "$(dirname "$0")/../../test/vm/guest.sh"
# shellcheck disable=SC1091 # settings from bench/vm.sh, which the VM's environment cannot carry
[ -f "$results/bench.env" ] && . "$results/bench.env"
size=${PLOOP_CSI_BENCH_VM_SIZE:-384M}
runtime=${PLOOP_CSI_BENCH_VM_RUNTIME:-5}
passes=${PLOOP_CSI_BENCH_VM_PASSES:-4}
pool_fs=${PLOOP_CSI_BENCH_VM_FS:-ext4}
cli() { node "$repo/dist/src/cli/main.js" "$@"; }

command -v fio >/dev/null || { say "fio is not installed on the host"; exit 1; }
# shellcheck disable=SC2119 # nothing beyond what every suite needs
guest_need_build
# The pool is shared by every device; the VM's /tmp holds half its memory, so the three backing
# files must fit in that.
guest_pool 1600M "$pool_fs"
guest_shared_mounts

# The first write to a guest page makes the host allocate it, which under emulation costs more
# than the write: whichever device ran first paid for most of the VM's memory (a third of the
# rate in one run). Touching the free memory once first leaves every device the same. Before
# anything is attached: the touch makes the kernel reclaim page cache, and done after attaching
# it left ublk's first pass with one 0.3-0.5 s stall, most likely blockd's code pages being read
# back over the VM's 9p root.
free_kb=$(awk '/MemAvailable/ { print $2 }' /proc/meminfo)
t=$(now)
node -e 'const b = []; for (let i = 0; i < +process.argv[1]; i++) b.push(Buffer.alloc(64 << 20, 1));' \
  "$((free_kb * 8 / 10 / 1024 / 64))" || say "warning: could not touch the free memory first"
say "touched $((free_kb * 8 / 10 / 1024)) MiB of memory in $(since "$t") s"

# The price of one 4 KiB copy between the kernel and user memory, which the ublk server pays for
# every small request and loop does not: cached reads of 4 KiB against 512 B (report.mjs).
dd if=/dev/urandom of="$work/pool/probe" bs=1M count=4 status=none # written, so cached
for bs in 4k 512; do
  fio --name=probe --filename="$work/pool/probe" --rw=randread --bs="$bs" --ioengine=psync --invalidate=0 \
    --time_based --runtime=2 --output-format=json --output="$results/probe-copy-$bs.json" >/dev/null 2>&1 ||
    say "warning: the copy probe ($bs) failed"
done
rm -f "$work/pool/probe"

start_blockd() { # NAME BLOCKD-ARGS...: starts a blockd on $work/NAME.sock
  name=$1
  shift
  cli blockd --socket "$work/$name.sock" --state-dir "$work/$name-state" "$@" \
    >"$results/bench-$name.log" 2>&1 &
  i=0
  until cli device list --socket "$work/$name.sock" >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 300 ] || { say "blockd $name did not start"; exit 1; }
    sleep 0.5
  done
}
queues=${PLOOP_CSI_BENCH_VM_QUEUES:-1}
start_blockd blockd --queues "$queues"
start_blockd blockd-copy --queues "$queues" --no-zero-copy
ublk='' copy='' loop=''
release() { # detaches the three devices; fails when a detach does
  cli device detach "$ublk" --socket "$work/blockd.sock" >/dev/null &&
    cli device detach "$copy" --socket "$work/blockd-copy.sock" >/dev/null &&
    losetup -d "$loop"
}
fresh() { # new, empty backing files for the three devices
  if [ -n "$ublk" ]; then
    release || exit 1
    rm -rf "$work/pool/vol" "$work/pool/volc" "$work/pool/raw.img"
  fi
  cli image create "$work/pool/vol/DiskDescriptor.xml" --size "$size" >/dev/null || exit 1
  cli image create "$work/pool/volc/DiskDescriptor.xml" --size "$size" >/dev/null || exit 1
  ublk=$(cli device attach "$work/pool/vol/DiskDescriptor.xml" --socket "$work/blockd.sock") || exit 1
  copy=$(cli device attach "$work/pool/volc/DiskDescriptor.xml" --socket "$work/blockd-copy.sock") || exit 1
  truncate -s "$size" "$work/pool/raw.img"
  loop=$(losetup --find --show "$work/pool/raw.img") || exit 1
}
fresh
cli device list --socket "$work/blockd.sock" --json >"$results/bench-devices.json" 2>/dev/null
cli device list --socket "$work/blockd-copy.sock" --json >"$results/bench-devices-copy.json" 2>/dev/null
say "kernel $(uname -r); ploop/ublk $ublk, in copy mode $copy, loop $loop ($size each, $pool_fs pool); fio $(fio --version)"

rc=0
run() { # NAME PASS KIND DEVICE FIO-ARGS...
  name=$1 pass=$2 kind=$3 path=$4
  shift 4
  out="$results/fio-$name-$kind-$pass"
  sync
  echo 3 >/proc/sys/vm/drop_caches
  if ! fio --name="$name" --filename="$path" --direct=1 --ioengine=libaio --output-format=json \
    --output="$out.json" "$@" >/dev/null 2>"$out.err"; then
    say "fio $name on $kind failed: $(cat "$out.err")"
    rc=1
  fi
}
pass() { # NAME PASS FIO-ARGS...: odd passes in device order, even ones in reverse
  name=$1 p=$2
  shift 2
  if [ $((p % 2)) -eq 1 ]; then
    run "$name" "$p" ublk "$ublk" "$@"
    run "$name" "$p" copy "$copy" "$@"
    run "$name" "$p" loop "$loop" "$@"
  else
    run "$name" "$p" loop "$loop" "$@"
    run "$name" "$p" copy "$copy" "$@"
    run "$name" "$p" ublk "$ublk" "$@"
  fi
}
row() { # NAME FRESH FIO-ARGS...: the passes of a row, each on new backing files when FRESH=1
  row_name=$1 row_fresh=$2
  shift 2
  p=1
  while [ "$p" -le "$passes" ]; do
    [ "$row_fresh" -eq 0 ] || [ "$p" -eq 1 ] || fresh
    pass "$row_name" "$p" "$@"
    p=$((p + 1))
  done
  say "$row_name done"
}
# The sequential write allocates, so each of its passes starts from empty files; the other rows
# run over the data it left.
row seq-write-1m 1 --rw=write --bs=1M --iodepth=8 --size="$size"
row seq-read-1m 0 --rw=read --bs=1M --iodepth=8 --size="$size"
row rand-write-4k 0 --rw=randwrite --bs=4k --iodepth=32 --time_based --runtime="$runtime" --size="$size"
row rand-read-4k 0 --rw=randread --bs=4k --iodepth=32 --time_based --runtime="$runtime" --size="$size"

release || rc=1
pkill -TERM -f "cli/main.js blockd"
wait
for v in vol volc; do
  cli image check "$work/pool/$v/DiskDescriptor.xml" >/dev/null || { say "image check of $v failed after the benchmark"; rc=1; }
done
umount "$work/pool"
rm -rf "$work"
exit "$rc"
