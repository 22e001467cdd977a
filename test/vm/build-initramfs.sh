#!/usr/bin/env bash
# Build the initramfs that boots a test VM.
#
#   test/vm/build-initramfs.sh [--force] KVER_DIR OUT.gz
#
# KVER_DIR is a kernel unpacked by fetch-kernels.sh ($PLOOP_CSI_VM_CACHE/kernels/<version>).
# The image holds a static busybox, the decompressed modules the tests need (9p for the shared
# host root, ublk_drv, loop, ext4, xfs and everything they depend on, in load order) and an
# `init` that mounts the host root read-only, runs the test command chrooted into it, records
# its exit status in the results share and powers the VM off (see test/vm/README.md).
#
# OUT.gz is rebuilt only when its inputs changed (this script, busybox, the kernel, the module
# list); --force rebuilds it anyway. Extra modules can be added with PLOOP_CSI_VM_MODULES
# ("dm_mod nbd", dependencies are resolved too).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Loaded in this order after their dependencies.
BASE_MODULES=(netfs 9pnet 9pnet_virtio 9p ublk_drv loop ext4 xfs)

force=0
if [ "${1:-}" = --force ]; then
  force=1
  shift
fi
[ $# -eq 2 ] || {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
  exit 2
}
kdir=$(cd "$1" && pwd) || vm_die "kernel directory $1 not found"
out=$2

kver=$(sed -n 's/^kernel=//p' "$kdir/.complete" 2>/dev/null || true)
kver=${kver:-$(basename "$kdir")}
moddir=$(vm_modules_dir "$kdir" "$kver") || vm_die "no modules for $kver in $kdir (run test/vm/fetch-kernels.sh)"

read -r -a extra_modules <<<"${PLOOP_CSI_VM_MODULES:-}"

busybox=
for f in /bin/busybox /usr/bin/busybox; do
  if [ -x "$f" ] && ! ldd "$f" >/dev/null 2>&1; then
    busybox=$f
    break
  fi
done
[ -n "$busybox" ] || vm_die "no static busybox found: apt-get install busybox-static"
for tool in cpio xz gzip modinfo; do
  command -v "$tool" >/dev/null 2>&1 || vm_die "$tool not found (run test/vm/fetch-kernels.sh to install the host tools)"
done

# --- up to date? --------------------------------------------------------------------------------
stamp=$(
  {
    sha256sum "$0" "$VM_DIR/init.sh" "$busybox"
    cat "$kdir/.complete" 2>/dev/null || true
    echo "${BASE_MODULES[*]} ${extra_modules[*]}"
  } | sha256sum | cut -d' ' -f1
)
if [ "$force" -eq 0 ] && [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
  vm_log "initramfs for $kver is up to date: $out"
  exit 0
fi

staging=$(mktemp -d "${TMPDIR:-/tmp}/ploop-csi-initramfs.XXXXXX")
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging"/{bin,dev,proc,sys,mnt,results,lib/modules}
cp "$busybox" "$staging/bin/busybox"

# --- modules ------------------------------------------------------------------------------------
declare -A ko_path=()  # module name -> path below $moddir
declare -A builtin=()  # module names built into the kernel
declare -A seen=()     # modules already resolved
declare -A alias_of=() # alias -> module names (filled on first use)
load_order=()

while IFS= read -r f; do
  n=${f##*/}
  n=${n%%.ko*}
  ko_path[${n//-/_}]=$f
done < <(cd "$moddir" && find kernel -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
if [ -f "$moddir/modules.builtin" ]; then
  while IFS= read -r f; do
    n=${f##*/}
    n=${n%.ko}
    builtin[${n//-/_}]=1
  done <"$moddir/modules.builtin"
fi

# Modules providing an alias such as "crypto-crc32c" (used by soft dependencies). Only the
# directories that hold such providers are scanned: reading every module would take minutes.
modules_for_alias() { # ALIAS
  local a=$1 f n line
  if [ ${#alias_of[@]} -eq 0 ]; then
    alias_of[.]=scanned
    while IFS= read -r f; do
      n=${f##*/}
      n=${n%%.ko*}
      n=${n//-/_}
      while IFS= read -r line; do
        [ -n "$line" ] && alias_of[$line]="${alias_of[$line]:-} $n"
      done < <(modinfo -F alias "$moddir/$f" 2>/dev/null)
    done < <(cd "$moddir" && find kernel/crypto kernel/arch/*/crypto kernel/lib -name '*.ko*' 2>/dev/null)
    if [ -f "$moddir/modules.builtin.modinfo" ]; then
      while IFS= read -r line; do
        alias_of[${line#*.alias=}]="${alias_of[${line#*.alias=}]:-} builtin"
      done < <(tr '\0' '\n' <"$moddir/modules.builtin.modinfo" | grep '^[^.]*\.alias=')
    fi
  fi
  printf '%s\n' "${alias_of[$a]:-}"
}

decompress() { # SRC DEST
  case $1 in
    *.xz) xz -dc "$1" >"$2" ;;
    *.zst) zstd -q -dc "$1" >"$2" ;;
    *.gz) gzip -dc "$1" >"$2" ;;
    *) cp "$1" "$2" ;;
  esac
}

# Depth-first: soft "pre" dependencies and hard dependencies are added before the module.
add_module() { # NAME REQUIRED(0|1)
  local n required=$2 ko dep kind m providers
  n=${1//-/_}
  [ -z "${seen[$n]:-}" ] || return 0
  seen[$n]=1
  [ -z "${builtin[$n]:-}" ] || return 0
  if [ -z "${ko_path[$n]:-}" ]; then
    providers=$(modules_for_alias "$1")
    if [ -n "$providers" ]; then
      for m in $providers; do
        [ "$m" = builtin ] || add_module "$m" 0
      done
      return 0
    fi
    if [ "$required" -eq 1 ]; then
      vm_die "module $1 not found for $kver"
    fi
    vm_log "optional module $1 not found for $kver, skipped"
    return 0
  fi
  ko=$staging/lib/modules/$n.ko
  decompress "$moddir/${ko_path[$n]}" "$ko"
  # softdep looks like "pre: a b post: c"
  kind=
  for dep in $(modinfo -F softdep "$ko"); do
    case $dep in
      pre: | post:) kind=$dep ;;
      *) if [ "$kind" = pre: ]; then add_module "$dep" 0; fi ;;
    esac
  done
  for dep in $(modinfo -F depends "$ko" | tr ',' ' '); do
    add_module "$dep" 1
  done
  load_order+=("$n")
  kind=
  for dep in $(modinfo -F softdep "$ko"); do
    case $dep in
      pre: | post:) kind=$dep ;;
      *) if [ "$kind" = post: ]; then add_module "$dep" 0; fi ;;
    esac
  done
}

for m in "${BASE_MODULES[@]}" "${extra_modules[@]}"; do
  add_module "$m" 1
done
printf '%s\n' "${load_order[@]}" >"$staging/lib/modules/load.list"
printf '%s\n' "$kver" >"$staging/lib/modules/kernel"

# --- init ---------------------------------------------------------------------------------------
cp "$VM_DIR/init.sh" "$staging/init"
chmod 755 "$staging/init"

# --- pack ---------------------------------------------------------------------------------------
mkdir -p "$(dirname "$out")"
(cd "$staging" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
printf '%s\n' "$stamp" >"$out.stamp"
vm_log "initramfs for $kver: $out ($(du -h "$out" | cut -f1); modules: ${load_order[*]})"
