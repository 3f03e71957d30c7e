#!/usr/bin/env bash
# `make e2e-k8s`: the chart end to end on the test cluster, from a fresh clone.
#   1. build (or find cached) the cluster's binaries and images, the facestream image
#      included (scripts/k8s.sh build);
#   2. bring the cluster up with its dependencies (scripts/k8s.sh up);
#   3. run tests/e2e_k8s (FACESTREAM_E2E_K8S=1): helm install with values-small.yaml,
#      the camera, the events, the API, metrics, pod deletions, helm upgrade, the
#      training RayJob and `models promote` of its version;
#   4. bring the cluster down (always; K8S_E2E_KEEP_CLUSTER=1 leaves it running).
# Prints how long each step took. Needs root, the project venv (make setup) and helm
# (make tools).
set -euo pipefail
# shellcheck source=scripts/k8s/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PY="${FACESTREAM_VENV:-$CACHE/venv}/bin/python"
[[ -x "$PY" ]] || die "no project venv at $PY (make setup)"
[[ "$(id -u)" == 0 ]] || die "the test cluster needs root"

t0=$SECONDS
bash "$REPO/scripts/k8s.sh" build
t_build=$((SECONDS - t0))

down() {
  local rc=$?
  if [[ "${K8S_E2E_KEEP_CLUSTER:-0}" != 1 ]]; then bash "$REPO/scripts/k8s.sh" down || rc=1; fi
  log "durations: build ${t_build}s, up ${t_up:-?}s, tests ${t_test:-?}s, total $((SECONDS - t0))s"
  exit "$rc"
}
trap down EXIT

t1=$SECONDS
K8S_BUILD=0 bash "$REPO/scripts/k8s.sh" up
t_up=$((SECONDS - t1))

t2=$SECONDS
cd "$REPO"
FACESTREAM_E2E_K8S=1 "$PY" -m pytest -v -rs -s -p no:cacheprovider tests/e2e_k8s "$@"
t_test=$((SECONDS - t2))
