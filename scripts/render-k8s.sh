#!/usr/bin/env bash
# Render the Helm chart into the plain kustomize base (deploy/k8s/base/facestream.yaml).
# With --check, fail instead of writing when the committed base differs from the chart.
set -euo pipefail
cd "$(dirname "$0")/.."
HELM="${HELM:-$(command -v helm || echo "$HOME/.cache/facestream/bin/helm")}"
out=deploy/k8s/base/facestream.yaml
rendered="$(
  echo "# Rendered by scripts/render-k8s.sh from charts/facestream and deploy/k8s/values-base.yaml."
  echo "# Do not edit: change the chart or the values and render again."
  "$HELM" template facestream charts/facestream -f deploy/k8s/values-base.yaml
)"
if [[ "${1:-}" == "--check" ]]; then
  diff -u "$out" <(printf '%s\n' "$rendered") >&2 || {
    echo "deploy/k8s/base is stale: run scripts/render-k8s.sh" >&2
    exit 1
  }
else
  printf '%s\n' "$rendered" > "$out"
fi
