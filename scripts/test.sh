#!/usr/bin/env bash
# Set up the machine and run the whole test suite: lint, typecheck, the native engine's build
# and host test, the TypeScript build and tests, then the kernel-level suites in a VM per
# Debian kernel (scripts/test-vm.sh; required when CI is set, reported as SKIPPED elsewhere
# when qemu or the kernels cannot be had).
# Stops at the first failing step with its exit status.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# ploop, losetup, mkfs.* and friends live in sbin, which is not on every PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

bash scripts/setup-test.sh
npm run lint
npm run typecheck
npm run build:native
npm run test:native
npm test
PLOOP_CSI_SKIP_BUILD=1 bash scripts/test-vm.sh
