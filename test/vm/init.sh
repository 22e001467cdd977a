#!/bin/busybox sh
# shellcheck shell=sh
# /init of the test VM (packed by build-initramfs.sh, run by busybox as PID 1).
#
# Loads the modules listed in /lib/modules/load.list, mounts the host root (9p tag "hostroot")
# read-only on /mnt with fresh proc, sys, dev, run, tmp, var/tmp and root file systems over it,
# moves the results share (9p tag "results") to the path given by ploopcsi.results=, runs
# ploopcsi.cmd= chrooted into /mnt, writes the exit status to <results>/exit-status and powers
# off. Problems of the VM itself end with status 125 (127: command not found) and a message in
# <results>/vm-error.
#
# Kernel command line: ploopcsi.cmd=PATH ploopcsi.results=PATH [ploopcsi.cwd=PATH]
#                      [ploopcsi.msize=BYTES] [ploopcsi.share=PATH]
# With ploopcsi.share= the 9p tag "work" (a host directory below one of the directories replaced
# here, such as a checkout in /tmp) is mounted read-only at that path.
/bin/busybox --install -s /bin
export PATH=/bin
umask 022

say() { echo "ploop-csi-vm: $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say "init started at $(uptime_s)s on $(uname -r)"

cmd=''
results=''
cwd=/
share=''
msize=262144
read -r cmdline </proc/cmdline
for arg in $cmdline; do
  case $arg in
    ploopcsi.cmd=*) cmd=${arg#*=} ;;
    ploopcsi.results=*) results=${arg#*=} ;;
    ploopcsi.cwd=*) cwd=${arg#*=} ;;
    ploopcsi.msize=*) msize=${arg#*=} ;;
    ploopcsi.share=*) share=${arg#*=} ;;
  esac
done

# Where the results share is mounted right now (it moves into the chroot later).
resdir=''

finish() { # STATUS [MESSAGE]
  if [ -n "$2" ]; then
    say "error: $2"
    [ -z "$resdir" ] || echo "$2" >"$resdir/vm-error"
  fi
  if [ -n "$resdir" ]; then
    echo "$1" >"$resdir/exit-status"
    sync
    umount "$resdir" 2>/dev/null
  fi
  say "finished at $(uptime_s)s"
  say "exit status $1"
  poweroff -f
  sleep 10
}

while read -r m; do
  insmod "/lib/modules/$m.ko" || say "insmod $m failed"
done </lib/modules/load.list
say "modules loaded at $(uptime_s)s"

if mount -t 9p -o "trans=virtio,version=9p2000.L,msize=$msize,cache=none" results /results; then
  resdir=/results
  rm -f /results/exit-status /results/vm-error
else
  say "error: could not mount the results share"
fi

mount -t 9p -o "trans=virtio,version=9p2000.L,msize=$msize,ro,cache=loose" hostroot /mnt ||
  finish 125 "could not mount the host root (9p tag hostroot)"

if ! {
  mount -t proc proc /mnt/proc &&
    mount -t sysfs sysfs /mnt/sys &&
    mount -t devtmpfs devtmpfs /mnt/dev &&
    mkdir -p /mnt/dev/pts /mnt/dev/shm &&
    mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /mnt/dev/pts &&
    mount -t tmpfs -o mode=1777 tmpfs /mnt/dev/shm &&
    mount -t tmpfs -o mode=755 tmpfs /mnt/run &&
    mount -t tmpfs -o mode=1777 tmpfs /mnt/tmp &&
    mount -t tmpfs -o mode=1777 tmpfs /mnt/var/tmp &&
    mount -t tmpfs -o mode=700 tmpfs /mnt/root
}; then
  finish 125 "could not mount the pseudo file systems in the host root"
fi

if [ -n "$share" ]; then
  mkdir -p "/mnt$share" 2>/dev/null
  mount -t 9p -o "trans=virtio,version=9p2000.L,msize=$msize,ro,cache=loose" work "/mnt$share" ||
    finish 125 "could not mount the shared directory $share (9p tag work)"
fi

if [ -n "$resdir" ] && [ -n "$results" ]; then
  # The mount point exists in the read-only host root, or is created in one of the tmpfs.
  mkdir -p "/mnt$results" 2>/dev/null
  if mount --move /results "/mnt$results"; then
    resdir=/mnt$results
  else
    say "could not move the results share to $results"
  fi
fi

[ -n "$cmd" ] || finish 125 "no ploopcsi.cmd= on the kernel command line"
[ -f "/mnt$cmd" ] || finish 127 "$cmd: no such file in the host root"

hostname ploop-csi-vm
say "running $cmd at $(uptime_s)s"
# shellcheck disable=SC2016 # expanded by the shell inside the chroot
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  LANG=C.UTF-8 TERM=dumb PLOOP_CSI_VM=1 PLOOP_CSI_VM_RESULTS="$results" \
  chroot /mnt /bin/sh -c 'cd "$1" 2>/dev/null || cd /; if [ -x "$2" ]; then exec "$2"; else exec /bin/sh "$2"; fi' \
  sh "$cwd" "$cmd" </dev/null
finish $?
