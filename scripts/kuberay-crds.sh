#!/usr/bin/env bash
# Fetch the KubeRay CRDs (RayCluster, RayJob, RayService) that the chart's custom
# resources are validated against in tests/unit/test_k8s_schemas.py. They come from the Go
# module github.com/ray-project/kuberay/ray-operator through the Go module proxy (the
# module zip holds config/crd/bases/*.yaml), so no chart repository or GitHub access is
# needed. Prints the folder that holds them.
#   KUBERAY_VERSION  module version (default v1.5.1, the KubeRay release the chart targets)
#   KUBERAY_CRDS     cache root (default ~/.cache/facestream/kuberay-crds)
set -euo pipefail
version="${KUBERAY_VERSION:-v1.5.1}"
dest="${KUBERAY_CRDS:-$HOME/.cache/facestream/kuberay-crds}/$version"
crds=(ray.io_rayclusters.yaml ray.io_rayjobs.yaml ray.io_rayservices.yaml)

have_all() {
  for f in "${crds[@]}"; do [[ -s "$dest/$f" ]] || return 1; done
}
if have_all; then
  echo "$dest"
  exit 0
fi
command -v go >/dev/null || { echo "kuberay-crds: go is not installed" >&2; exit 1; }
# -mod=mod: download outside any module's go.mod; run from a scratch folder so a go.mod
# in the caller's working directory is never touched.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
dir="$(cd "$scratch" && GOFLAGS=-mod=mod go mod download -json \
  "github.com/ray-project/kuberay/ray-operator@$version" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
mkdir -p "$dest.tmp.$$"
for f in "${crds[@]}"; do
  cp "$dir/config/crd/bases/$f" "$dest.tmp.$$/$f"
done
chmod -R u+w "$dest.tmp.$$"   # the module cache is read-only; the copies need not be
rm -rf "$dest"
mv "$dest.tmp.$$" "$dest"
echo "$dest"
