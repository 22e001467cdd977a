#!/bin/sh
# Runs inside a test VM (bench/vm.sh boots it): fio on a ploop image served through blockd and
# ublk, and on the kernel loop device over a raw file of the same size, in the same VM and file
# system, one after the other. Rows: 1 MiB sequential write and read, 4 KiB random write and
# read at queue depth 32 (direct I/O, libaio). Both backing files start empty, so the sequential
# write also allocates (ploop clusters; ext4 blocks for the raw file), and the random rows then
# run over fully allocated data. Results: fio JSON per row and device in the results share.
set -u
repo=$(cd "$(dirname "$0")/../.." && pwd)
results=${PLOOP_CSI_VM_RESULTS:-/tmp}
work=/tmp/bench
size=${PLOOP_CSI_BENCH_VM_SIZE:-384M}
runtime=${PLOOP_CSI_BENCH_VM_RUNTIME:-10}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
say() { echo "[bench] $*"; }
cli() { node "$repo/dist/src/cli/main.js" "$@"; }

command -v fio >/dev/null || { say "fio is not installed on the host"; exit 1; }
rm -rf "$work" && mkdir -p "$work/pool" || exit 1
# The pool: ext4 on a loop device over a file in the VM's memory (both devices share it; the
# VM's /tmp holds half its memory, so the two backing files must fit in that).
truncate -s 1G "$work/pool.img" && mkfs.ext4 -q "$work/pool.img" && mount -o loop "$work/pool.img" "$work/pool" || {
  say "could not set up the pool"
  exit 1
}
mount --make-rshared / 2>/dev/null

cli image create "$work/pool/vol/DiskDescriptor.xml" --size "$size" >/dev/null || exit 1
cli blockd --socket "$work/blockd.sock" --state-dir "$work/state" >"$results/bench-blockd.log" 2>&1 &
blockd=$!
i=0
until cli device list --socket "$work/blockd.sock" >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -lt 300 ] || { say "blockd did not start"; exit 1; }
  sleep 0.5
done
ublk=$(cli device attach "$work/pool/vol/DiskDescriptor.xml" --socket "$work/blockd.sock") || exit 1
truncate -s "$size" "$work/pool/raw.img"
loop=$(losetup --find --show "$work/pool/raw.img") || exit 1
say "kernel $(uname -r); ploop/ublk $ublk, loop $loop ($size each); fio $(fio --version)"

rc=0
row() { # NAME FIO-ARGS...
  name=$1
  shift
  for dev in "ublk:$ublk" "loop:$loop"; do
    kind=${dev%%:*}
    path=${dev#*:}
    sync
    echo 3 >/proc/sys/vm/drop_caches
    if ! fio --name="$name" --filename="$path" --direct=1 --ioengine=libaio --output-format=json \
      --output="$results/fio-$name-$kind.json" "$@" >/dev/null 2>"$results/fio-$name-$kind.err"; then
      say "fio $name on $kind failed: $(cat "$results/fio-$name-$kind.err")"
      rc=1
    fi
  done
  say "$name done"
}
row seq-write-1m --rw=write --bs=1M --iodepth=8 --size="$size"
row seq-read-1m --rw=read --bs=1M --iodepth=8 --size="$size"
row rand-write-4k --rw=randwrite --bs=4k --iodepth=32 --time_based --runtime="$runtime" --size="$size"
row rand-read-4k --rw=randread --bs=4k --iodepth=32 --time_based --runtime="$runtime" --size="$size"

cli device detach "$ublk" --socket "$work/blockd.sock" >/dev/null || rc=1
losetup -d "$loop"
kill -TERM "$blockd"
wait "$blockd"
cli image check "$work/pool/vol/DiskDescriptor.xml" >/dev/null || { say "image check failed after the benchmark"; rc=1; }
umount "$work/pool"
rm -rf "$work"
exit "$rc"
