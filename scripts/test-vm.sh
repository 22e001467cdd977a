#!/usr/bin/env bash
# The kernel-level suites: boots each Debian kernel that ships ublk_drv under qemu (test/vm)
# and runs the native engine's end-to-end test and the CSI node lifecycle in it. Needs root, qemu-system-x86 and the
# Debian archive (test/vm/fetch-kernels.sh installs and downloads what is missing).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

kernels=("${@:-7 6.12}")
# shellcheck disable=SC2206
kernels=(${kernels[*]})

bash scripts/setup-test.sh
test/vm/fetch-kernels.sh "${kernels[@]}"
npm run build
npm run build:native

export PLOOP_CSI_VM_TIMEOUT="${PLOOP_CSI_VM_TIMEOUT:-900}"
status=0
for k in "${kernels[@]}"; do
  echo "== native engine on Linux $k"
  test/vm/run-in-vm.sh "$k" test/vm/native-smoke.sh || status=1
  echo "== CSI node service with blockd on Linux $k"
  test/vm/run-in-vm.sh "$k" test/vm/csi-node.sh || status=1
done
exit "$status"
