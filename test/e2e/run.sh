#!/usr/bin/env bash
# End-to-end tests on a kind cluster: creates the cluster (deploy/kind/cluster.yaml), builds the
# image and loads it into the nodes, installs the VolumeSnapshot CRDs and a snapshot-controller
# with distributed snapshotting, installs the chart with charts/ploop-csi/examples/kind.yaml, and
# runs test/e2e/*.e2e.ts against it.
#
# Needs: Docker, kind, helm, kubectl, a host kernel with ublk_drv (kind nodes share it) and root
# for modprobe. Not run in the project's CI, which has no container engine.
#
#   KEEP_CLUSTER=1   leave the cluster up afterwards (default: delete it)
#   REUSE_CLUSTER=1  use an existing cluster of the same name
#   SNAPSHOTTER_REF  external-snapshotter tag for the CRDs and controller (default v8.6.0)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

CLUSTER=ploop-csi-e2e
IMAGE=ploop-csi:e2e
NAMESPACE=ploop-csi
SNAPSHOTTER_REF="${SNAPSHOTTER_REF:-v8.6.0}"
SNAPSHOTTER_SRC="${SNAPSHOTTER_SRC:-https://github.com/kubernetes-csi/external-snapshotter}"

# helm and kubectl may also come from the npm devDependency (see scripts/check-manifests.sh).
for d in .cache/k8s-tools/*/helm .cache/k8s-tools/*/kubectl; do
  [[ -x "$d/$(basename "$d")" ]] && PATH="$PATH:$PWD/$d"
done
missing=()
for tool in docker kind helm kubectl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]} > 0)); then
  echo "e2e: missing ${missing[*]}: the end-to-end tests need Docker, kind, helm and kubectl" >&2
  echo "e2e: (helm and kubectl are extracted by scripts/check-manifests.sh into .cache/k8s-tools/)" >&2
  exit 2
fi
if ! docker info >/dev/null 2>&1; then
  echo "e2e: docker is installed but no Docker engine answers" >&2
  exit 2
fi
if [[ ! -e /dev/ublk-control ]] && ! modprobe ublk_drv 2>/dev/null; then
  echo "e2e: the host kernel has no ublk_drv (needs Linux >= 6.1 with CONFIG_BLK_DEV_UBLK)" >&2
  exit 2
fi

log() { echo "e2e: $*" >&2; }

cleanup() {
  local rc=$?
  if ((rc != 0)); then
    mkdir -p .cache/e2e-logs
    kind export logs .cache/e2e-logs --name "$CLUSTER" >/dev/null 2>&1 || true
    kubectl -n "$NAMESPACE" logs -l app.kubernetes.io/instance=ploop-csi --all-containers --prefix \
      >.cache/e2e-logs/ploop-csi.log 2>&1 || true
    log "logs in .cache/e2e-logs"
  fi
  if [[ "${KEEP_CLUSTER:-}" != 1 ]]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
  exit "$rc"
}

# Pool directories on the host's file system, one per node (see deploy/kind/cluster.yaml).
mkdir -p /var/tmp/ploop-csi-e2e/control-plane /var/tmp/ploop-csi-e2e/worker /var/tmp/ploop-csi-e2e/worker2

if [[ "${REUSE_CLUSTER:-}" == 1 ]] && kind get clusters | grep -qx "$CLUSTER"; then
  log "reusing cluster $CLUSTER"
else
  kind create cluster --config deploy/kind/cluster.yaml --wait 120s
fi
trap cleanup EXIT
kubectl config use-context "kind-$CLUSTER" >/dev/null

log "building $IMAGE"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "installing the snapshot CRDs and snapshot-controller $SNAPSHOTTER_REF"
kubectl kustomize "$SNAPSHOTTER_SRC/client/config/crd?ref=$SNAPSHOTTER_REF" | kubectl apply -f -
kubectl wait --for=condition=Established --timeout=60s \
  crd/volumesnapshotclasses.snapshot.storage.k8s.io \
  crd/volumesnapshotcontents.snapshot.storage.k8s.io \
  crd/volumesnapshots.snapshot.storage.k8s.io
kubectl -n kube-system kustomize "$SNAPSHOTTER_SRC/deploy/kubernetes/snapshot-controller?ref=$SNAPSHOTTER_REF" |
  kubectl -n kube-system apply -f -
# csi-snapshotter runs with --node-deployment: the controller must label contents with the node.
kubectl -n kube-system patch deployment snapshot-controller --type=json \
  -p '[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--enable-distributed-snapshotting"}]'
kubectl -n kube-system rollout status deployment/snapshot-controller --timeout=180s

log "installing the chart"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl label --overwrite namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=privileged
helm upgrade --install ploop-csi charts/ploop-csi --namespace "$NAMESPACE" \
  --values charts/ploop-csi/examples/kind.yaml --wait --timeout 5m
kubectl -n "$NAMESPACE" rollout status daemonset/ploop-csi-blockd --timeout=180s
kubectl -n "$NAMESPACE" rollout status daemonset/ploop-csi-node --timeout=180s

log "running the tests"
E2E_NAMESPACE="$NAMESPACE" npx vitest run --config test/e2e/vitest.config.ts "$@"
