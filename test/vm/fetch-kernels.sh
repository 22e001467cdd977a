#!/usr/bin/env bash
# Fetch the Debian kernels that the VM tests boot, and the host tools they need.
#
#   test/vm/fetch-kernels.sh [--refresh] [--no-kernels] [SERIES...]
#
# SERIES is "6.12" (newest 6.12 kernel from Debian trixie) and/or "7" (newest 7.x kernel from
# trixie-backports); both by default. The packages are downloaded with `apt-get download` and
# unpacked with `dpkg -x` into $PLOOP_CSI_VM_CACHE/kernels/<version>/ (default
# <repo>/.cache/vm) -- nothing is installed on the host. A series that already has a kernel in
# the cache is skipped unless --refresh is given, which updates the apt lists and fetches a
# newer kernel when the archive has one. --no-kernels only installs the host packages
# (qemu-system-x86, busybox-static, cpio, xz-utils, e2fsprogs, xfsprogs, kmod, fio: the VM
# suites drive writes with it).
#
# To make the trixie packages visible, the suites are added to apt with pin priority 100 (see
# test/vm/README.md), so that no package on the host is ever upgraded from them.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HOST_PACKAGES=(qemu-system-x86 busybox-static cpio xz-utils e2fsprogs xfsprogs kmod fio)
SOURCES_FILE=/etc/apt/sources.list.d/ploop-csi-trixie.sources
PREFS_FILE=/etc/apt/preferences.d/ploop-csi-trixie

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

refresh=0
kernels=1
series=()
while [ $# -gt 0 ]; do
  case $1 in
    --refresh) refresh=1 ;;
    --no-kernels) kernels=0 ;;
    -h | --help)
      usage
      exit 0
      ;;
    6.12 | 7) series+=("$1") ;;
    *)
      usage >&2
      vm_die "unknown argument '$1' (expected --refresh, 6.12 or 7)"
      ;;
  esac
  shift
done
[ ${#series[@]} -gt 0 ] || series=(6.12 7)

command -v apt-get >/dev/null 2>&1 || vm_die "apt-get not found: the VM harness needs a Debian-based host"
arch=$(dpkg --print-architecture)
[ "$arch" = amd64 ] || vm_die "only amd64 hosts are supported (this is $arch)"

apt_updated=0
apt_update() {
  if [ "$apt_updated" -eq 0 ]; then
    vm_log "apt-get update"
    vm_as_root apt-get update -q >&2 || vm_die "apt-get update failed (is the Debian archive reachable?)"
    apt_updated=1
  fi
}

# --- host packages ----------------------------------------------------------------------------
missing=()
for p in "${HOST_PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_update
  vm_log "installing host packages: ${missing[*]}"
  vm_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}" >&2 || vm_die "could not install ${missing[*]}"
fi

[ "$kernels" -eq 1 ] || exit 0

# --- which kernels are still needed -------------------------------------------------------------
suite_of() { # SERIES
  case $1 in
    6.12) echo trixie ;;
    7) echo trixie-backports ;;
  esac
}

todo=()
for s in "${series[@]}"; do
  if [ "$refresh" -eq 0 ] && k=$(vm_resolve_kernel "$s"); then
    vm_log "kernel $s: $k already in $VM_KERNELS"
  else
    todo+=("$s")
  fi
done
if [ ${#todo[@]} -eq 0 ]; then
  vm_cached_kernels
  exit 0
fi

# --- apt sources for trixie / trixie-backports ------------------------------------------------
# A suite counts as configured when any apt source already names it; only the missing ones are
# added, and only those get the low pin.
suite_configured() { # SUITE
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # one-line format: "deb [opts] URI SUITE COMPONENTS"; deb822 format: "Suites: a b c"
    if awk -v s="$1" '
      /^[[:space:]]*#/ { next }
      $1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == s) found = 1 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == s) found = 1 }
      END { exit !found }' "$f"; then
      return 0
    fi
  done
  return 1
}

# The Debian mirror the host already uses (falls back to deb.debian.org).
debian_mirror() {
  local uri
  uri=$(
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
      awk '
        /^[[:space:]]*#/ { next }
        $1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file|mirror\+[a-z]+):/) { print $i; break } }
        tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' |
      grep -E '/debian/?$' | head -n 1
  ) || true
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

if [ -f "$SOURCES_FILE" ]; then
  vm_log "apt source $SOURCES_FILE already present"
else
  add_suites=()
  for suite in trixie trixie-backports; do
    suite_configured "$suite" || add_suites+=("$suite")
  done
  if [ ${#add_suites[@]} -gt 0 ]; then
    mirror=$(debian_mirror)
    vm_log "adding apt suites ${add_suites[*]} from $mirror with pin priority 100"
    {
      for suite in "${add_suites[@]}"; do
        printf 'Package: *\nPin: release n=%s\nPin-Priority: 100\n\n' "$suite"
      done
    } | vm_as_root tee "$PREFS_FILE" >/dev/null
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
      "$mirror" "${add_suites[*]}" /usr/share/keyrings/debian-archive-keyring.gpg |
      vm_as_root tee "$SOURCES_FILE" >/dev/null
    apt_updated=0
  fi
fi

# Make sure the lists are fresh when asked to, and present at all otherwise.
if [ "$refresh" -eq 1 ] || ! apt-cache madison linux-image-amd64 | grep -q ' trixie'; then
  apt_update
fi

# --- resolve the package names --------------------------------------------------------------------
# Prints "KVER VERSION PACKAGE..." for the newest kernel of SERIES in SUITE, using the
# linux-image-amd64 metapackage of that suite and what it depends on.
resolve_kernel() { # SERIES SUITE
  local ser=$1 suite=$2 ver image kver deps pkgs=()
  ver=$(apt-cache madison linux-image-amd64 |
    awk -F'|' -v s=" $suite/main" 'index($3, s) { gsub(/ /, "", $2); print $2 }' |
    grep -E "^${ser//./\\.}[.~+-]" | sort -V | tail -n 1) || true
  [ -n "$ver" ] || return 1
  image=$(apt-cache show "linux-image-amd64=$ver" | sed -n 's/^Depends: //p' | head -n 1 |
    tr ',' '\n' | grep -oE 'linux-image-[0-9][^ ]*-amd64' | head -n 1) || true
  [ -n "$image" ] || return 1
  kver=${image#linux-image-}
  pkgs=("$image")
  # Since 7.x the image package is a metapackage; the files are in linux-binary-*,
  # linux-modules-* and linux-base-* (config, modules.builtin).
  deps=$(apt-cache show "$image=$ver" | sed -n 's/^Depends: //p' | head -n 1 | sed 's/[,|]/\n/g' |
    awk '{ print $1 }')
  local part
  for part in binary modules base; do
    if grep -qxF "linux-$part-$kver" <<<"$deps"; then
      pkgs+=("linux-$part-$kver")
    fi
  done
  printf '%s %s %s\n' "$kver" "$ver" "${pkgs[*]}"
}

mkdir -p "$VM_KERNELS"
for s in "${todo[@]}"; do
  suite=$(suite_of "$s")
  line=$(resolve_kernel "$s" "$suite") ||
    vm_die "no $s kernel found in Debian $suite (apt-cache madison linux-image-amd64 lists none)"
  read -r kver ver pkgs <<<"$line"
  dest=$VM_KERNELS/$kver
  if [ -f "$dest/.complete" ]; then
    vm_log "kernel $s: $kver ($ver) already in $dest"
    continue
  fi
  vm_log "kernel $s: $kver ($ver) from $suite: $pkgs"
  dl=$(mktemp -d "$VM_CACHE/download.XXXXXX")
  tmp=$dest.partial
  trap 'rm -rf "$dl" "$tmp"' EXIT
  rm -rf "$tmp"
  # apt drops privileges to _apt for downloads; let it write into the directory.
  if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$dl"; fi
  args=()
  for p in $pkgs; do args+=("$p=$ver"); done
  (cd "$dl" && apt-get download -q "${args[@]}") >&2 || vm_die "apt-get download of $pkgs failed"
  mkdir -p "$tmp"
  for deb in "$dl"/*.deb; do
    dpkg -x "$deb" "$tmp"
  done
  rm -rf "$dl"

  image=$(vm_kernel_image "$tmp" "$kver") || vm_die "no vmlinuz in the packages of $kver"
  config=$(vm_kernel_config "$tmp" "$kver") || vm_die "no kernel config in the packages of $kver"
  vm_modules_dir "$tmp" "$kver" >/dev/null || vm_die "no modules directory in the packages of $kver"
  if ! grep -qx 'CONFIG_BLK_DEV_UBLK=m' "$config"; then
    vm_die "$kver: $(grep -E 'BLK_DEV_UBLK' "$config" || echo 'CONFIG_BLK_DEV_UBLK unset'), expected CONFIG_BLK_DEV_UBLK=m"
  fi
  printf 'kernel=%s\nversion=%s\nsuite=%s\npackages=%s\nvmlinuz=%s\nconfig=%s\n' \
    "$kver" "$ver" "$suite" "$pkgs" "${image#"$tmp"/}" "${config#"$tmp"/}" >"$tmp/.complete"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  trap - EXIT
  vm_log "kernel $s: $kver unpacked in $dest (CONFIG_BLK_DEV_UBLK=m)"
done

vm_cached_kernels
