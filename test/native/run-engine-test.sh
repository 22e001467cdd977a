#!/bin/sh
# Builds and runs the host test of the native ploop engine (no ublk or root needed).
#   test/native/run-engine-test.sh [SEEDS]
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=$repo/build/test
mkdir -p "$out"
cc -std=gnu11 -O2 -g -Wall -Wextra -pthread -I"$repo/src/blockdev/native" \
  "$repo/src/blockdev/native/ploop.c" "$repo/src/blockdev/native/stats.c" \
  "$repo/test/native/ploop-engine-test.c" -o "$out/ploop-engine-test"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$out/ploop-engine-test" "$work" "${1:-4}"
