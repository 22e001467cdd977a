# shellcheck shell=bash
# Shared helpers for the VM test harness. Sourced by the scripts in this directory.

# shellcheck disable=SC2034 # the variables are used by the scripts that source this file
{
  VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  VM_REPO=$(git -C "$VM_DIR" rev-parse --show-toplevel 2>/dev/null || (cd "$VM_DIR/../.." && pwd))
  VM_CACHE=${PLOOP_CSI_VM_CACHE:-$VM_REPO/.cache/vm}
  VM_KERNELS=$VM_CACHE/kernels
  VM_INITRAMFS=$VM_CACHE/initramfs
}

vm_log() {
  printf '[vm] %s\n' "$*" >&2
}

vm_die() {
  printf '[vm] error: %s\n' "$*" >&2
  exit "${VM_DIE_STATUS:-1}"
}

# Run a command as root (directly when we are root, else through sudo).
vm_as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    vm_die "'$*' needs root and sudo is not available"
  fi
}

# Directory holding the modules of an unpacked kernel tree (Debian moved them to /usr/lib).
vm_modules_dir() { # KDIR KVER
  local d
  for d in "$1/usr/lib/modules/$2" "$1/lib/modules/$2"; do
    if [ -d "$d" ]; then
      printf '%s\n' "$d"
      return 0
    fi
  done
  return 1
}

vm_kernel_image() { # KDIR KVER
  local f
  for f in "$1/boot/vmlinuz-$2" "$1/usr/lib/modules/$2/vmlinuz" "$1/lib/modules/$2/vmlinuz"; do
    if [ -f "$f" ]; then
      printf '%s\n' "$f"
      return 0
    fi
  done
  return 1
}

vm_kernel_config() { # KDIR KVER
  local f
  for f in "$1/boot/config-$2" "$1/usr/lib/modules/$2/config" "$1/lib/modules/$2/config"; do
    if [ -f "$f" ]; then
      printf '%s\n' "$f"
      return 0
    fi
  done
  return 1
}

# Kernel versions present in the cache, newest first.
vm_cached_kernels() {
  local d
  [ -d "$VM_KERNELS" ] || return 0
  for d in "$VM_KERNELS"/*/; do
    d=${d%/}
    [ -f "$d/.complete" ] && basename "$d"
  done | sort -rV
}

# Resolve a kernel selector to a cached kernel version. Accepts a full version
# ("6.12.117+deb13-amd64") or a prefix of one ("6.12", "7", "7.3").
vm_resolve_kernel() { # SELECTOR
  local sel=$1 k
  if [ -f "$VM_KERNELS/$sel/.complete" ]; then
    printf '%s\n' "$sel"
    return 0
  fi
  while IFS= read -r k; do
    case $k in
      "$sel".* | "$sel"+* | "$sel"-*)
        printf '%s\n' "$k"
        return 0
        ;;
    esac
  done < <(vm_cached_kernels)
  return 1
}
