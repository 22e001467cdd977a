# shellcheck shell=sh
# Shared steps of the scripts that run inside a test VM (sourced after setting guest_name):
# logging with the suite's name, the elapsed-time helpers, the check that the host's build is
# there, and the pool (an ext4 file system on a loop device in the VM's memory).
# Sets: repo, results, work (/tmp/$guest_name), t_start.

# shellcheck disable=SC2034 # results and t_start are for the scripts that source this file
{
  : "${guest_name:?set guest_name before sourcing guest.sh}"
  repo=$(cd "$(dirname "$0")/../.." && pwd)
  results=${PLOOP_CSI_VM_RESULTS:-/tmp}
  work=/tmp/$guest_name
  export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
}

now() { cut -d' ' -f1 /proc/uptime; }
say() { echo "[$guest_name] $*"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; } # seconds since $1
# shellcheck disable=SC2034 # for the scripts that source this file
t_start=$(now)

# Fails when any of the given build outputs (relative to the repository) is missing.
guest_need_build() {
  for f in build/Release/ploop_ublk.node dist/src/cli/main.js "$@"; do
    [ -f "$repo/$f" ] || {
      say "missing $f: build on the host first (npm run build; npm run build:native)"
      exit 1
    }
  done
}

# A fresh $work with a pool of the given size mounted on $work/pool: an ext4 file system (or the
# type given second: ext4 or xfs) on a loop device over a file in the VM's memory.
guest_pool() {
  pool_fs=${2:-ext4}
  rm -rf "$work" && mkdir -p "$work/pool" || exit 1
  case $pool_fs in
    ext4 | xfs) ;;
    *) say "unknown pool file system '$pool_fs' (ext4 or xfs)"; exit 1 ;;
  esac
  if ! { truncate -s "$1" "$work/pool.img" && "mkfs.$pool_fs" -q "$work/pool.img" &&
    mount -o loop "$work/pool.img" "$work/pool"; }; then
    say "could not set up the $pool_fs pool"
    exit 1
  fi
}

# As on a systemd host (and as kubelet requires), mounts are shared: blockd, in a slave mount
# namespace, then sees file systems unmounted here go away in its namespace too.
guest_shared_mounts() {
  mount --make-rshared / || say "warning: cannot make / shared"
}
