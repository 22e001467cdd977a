#!/usr/bin/env bash
# Prepare a Debian/Ubuntu machine to run the test suite:
#   1. system tools used by the interop tests (qemu-img/qemu-io, ploop, fallocate, xxd, python3)
#      and what the native engine builds with (liburing-dev, g++, make), and the file system
#      tools the node-side tests run on loop devices (e2fsprogs, xfsprogs, util-linux), and the
#      shell script linter `npm run lint` runs (ShellCheck), installed with apt-get only when one
#      of them is missing;
#   2. the npm dependencies of the project.
# Safe to run repeatedly. Runs apt-get directly as root, through sudo otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DEBIAN_FRONTEND=noninteractive
# ploop installs into /usr/sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

packages=(qemu-utils ploop util-linux e2fsprogs xfsprogs xxd python3 liburing-dev g++ make shellcheck)
tools=(qemu-img qemu-io ploop fallocate losetup mkfs.ext4 mkfs.xfs xfs_growfs xxd python3 g++ make shellcheck)

missing_tools() {
  local t
  for t in "${tools[@]}"; do
    command -v "$t" >/dev/null 2>&1 || printf '%s ' "$t"
  done
  # The native ublk engine links liburing statically.
  [[ -f /usr/include/liburing.h ]] || printf '%s ' liburing.h
}

missing="$(missing_tools)"
if [[ -z "$missing" ]]; then
  echo "setup-test: system tools present (${tools[*]}); skipping apt-get"
else
  echo "setup-test: missing tools: ${missing% }"
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-test: apt-get not found; install these packages by hand: ${packages[*]}" >&2
    exit 1
  fi

  as_root=()
  if [[ "$(id -u)" -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "setup-test: not root and sudo is not available; run as root" >&2
      exit 1
    fi
    # Without a terminal sudo cannot ask for a password: fail fast instead of hanging.
    if [[ -t 0 ]]; then as_root=(sudo); else as_root=(sudo -n); fi
    as_root+=(env DEBIAN_FRONTEND=noninteractive)
  fi

  "${as_root[@]}" apt-get update

  available=()
  for p in "${packages[@]}"; do
    candidate="$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ { print $2 }')"
    if [[ -n "$candidate" && "$candidate" != "(none)" ]]; then
      available+=("$p")
    else
      echo "setup-test: warning: package '$p' is not available from the configured apt sources" >&2
    fi
  done

  if ((${#available[@]} > 0)); then
    "${as_root[@]}" apt-get install -y --no-install-recommends "${available[@]}"
  fi

  missing="$(missing_tools)"
  if [[ -n "$missing" ]]; then
    echo "setup-test: warning: still missing after apt-get: ${missing% }" >&2
  fi
fi

if [[ -f package-lock.json ]]; then
  npm ci --no-audit --no-fund
else
  npm install --no-audit --no-fund
fi
