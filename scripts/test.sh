#!/usr/bin/env bash
# Set up the machine and run the whole test suite: lint, typecheck, the native engine's build
# and host test, then the TypeScript build and tests.
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
