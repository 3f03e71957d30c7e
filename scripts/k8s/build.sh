#!/usr/bin/env bash
# Builds the cluster's binaries from Go modules of the Go module proxy, one component at a
# time (2 cores shared with other work: `nice`, `-p 2`). Each lands in
# $K8S_CACHE/bin/<component>-<version>/ with BUILD_INFO (how long it took); a component
# already there is not built again.
#
#   scripts/k8s/build.sh [all|kubernetes|etcd|coredns|kuberay|crictl|local-path]
set -euo pipefail
# shellcheck source=scripts/k8s/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v go >/dev/null || die "go is not installed (Go >= the modules' go lines is needed)"

# build_wrapper NAME VERSION GOMOD_BODY LDFLAGS OUT:PKG...
# Writes a wrapper module (go.mod with the requires/replaces given) under src/, builds
# each PKG into bin/NAME-VERSION/OUT, and records the wall time.
build_wrapper() {
  local name="$1" version="$2" gomod="$3" ldflags="$4"
  shift 4
  local out="$BIN_ROOT/$name-$version"
  local missing=0 spec
  for spec in "$@"; do [[ -x "$out/${spec%%:*}" ]] || missing=1; done
  if [[ "$missing" == 0 ]]; then
    log "$name $version: cached in $out"
    return
  fi
  local src="$K8S_CACHE/src/$name-$version"
  mkdir -p "$src"
  printf '%s\n' "$gomod" >"$src/go.mod"
  if [[ -d "$REPO/scripts/k8s/$name" ]]; then
    cp "$REPO/scripts/k8s/$name"/*.go "$src/"   # a main package of ours (coredns)
  fi
  local tmp="$out.tmp.$$" start=$SECONDS
  rm -rf "$tmp"
  mkdir -p "$tmp"
  log "$name $version: building $(printf '%s ' "${@%%:*}")(this takes a while on 2 cores)"
  for spec in "$@"; do
    (cd "$src" && nice_go build -trimpath -p 2 -ldflags "-s -w $ldflags" \
      -o "$tmp/${spec%%:*}" "${spec#*:}") || { rm -rf "$tmp"; die "$name: go build ${spec#*:} failed"; }
  done
  printf 'built %s in %ss with %s\n' "$(date -u +%FT%TZ)" "$((SECONDS - start))" "$(go version)" >"$tmp/BUILD_INFO"
  rm -rf "$out"
  mv "$tmp" "$out"
  log "$name $version: built in $((SECONDS - start))s -> $out"
}

# go.mod of a wrapper module that requires MODULE@VERSION and turns each of its
# relative replace directives (`X => ./staging/...`, `X => ../api`) into `X => X TAG`,
# the published module of the same release: a dependency's replaces are ignored by Go,
# so without them the build would take the unreleased v0.0.0 placeholders.
wrapper_gomod() {
  local module="$1" version="$2" tag="$3" dir
  dir="$(mod_dir "$module@$version")"
  printf 'module facestream.local/build\n\ngo %s\n\nrequire %s %s\n\nreplace (\n' \
    "$(awk '/^go /{print $2; exit}' "$dir/go.mod")" "$module" "$version"
  sed -nE 's#^\s*([^ ]+) => \.{1,2}/.*#\t\1 => \1 '"$tag"'#p' "$dir/go.mod"
  printf ')\n'
}

build_kubernetes() {
  local staging="v0.${K8S_VERSION#v1.}" minor date
  minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  # Version stamps as upstream's hack/lib/version.sh sets them; without them every binary
  # says v0.0.0-master and the kubelet/API server version checks refuse it. The build
  # date is the release's (from the proxy), so the same inputs give the same binaries.
  date="$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    python3 -c 'import json, sys; print(json.load(open(json.load(sys.stdin)["Info"]))["Time"])')"
  local ld="" key val
  for kv in "gitVersion=$K8S_VERSION" "gitMajor=1" "gitMinor=$minor" \
      "gitTreeState=clean" "buildDate=$date"; do
    key="${kv%%=*}" val="${kv#*=}"
    ld+=" -X k8s.io/component-base/version.$key=$val -X k8s.io/client-go/pkg/version.$key=$val"
  done
  local specs=() c
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    specs+=("$c:k8s.io/kubernetes/cmd/$c")
  done
  build_wrapper kubernetes "$K8S_VERSION" \
    "$(wrapper_gomod k8s.io/kubernetes "$K8S_VERSION" "$staging")" "$ld" "${specs[@]}"
}

build_etcd() {
  build_wrapper etcd "$ETCD_VERSION" \
    "$(wrapper_gomod go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION")" "" \
    "etcd:go.etcd.io/etcd/server/v3"
}

build_coredns() {
  build_wrapper coredns "$COREDNS_VERSION" \
    "$(wrapper_gomod github.com/coredns/coredns "$COREDNS_VERSION" "$COREDNS_VERSION")" \
    "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" "coredns:."
}

build_kuberay() {
  build_wrapper kuberay "$KUBERAY_VERSION" \
    "$(wrapper_gomod github.com/ray-project/kuberay/ray-operator "$KUBERAY_VERSION" "$KUBERAY_VERSION")" "" \
    "kuberay-operator:github.com/ray-project/kuberay/ray-operator"
}

build_crictl() {
  build_wrapper crictl "$CRITOOLS_VERSION" \
    "$(wrapper_gomod sigs.k8s.io/cri-tools "$CRITOOLS_VERSION" "$CRITOOLS_VERSION")" \
    "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRITOOLS_VERSION" \
    "crictl:sigs.k8s.io/cri-tools/cmd/crictl"
}

build_local_path() {
  build_wrapper local-path "$LOCALPATH_VERSION" \
    "$(wrapper_gomod github.com/rancher/local-path-provisioner "$LOCALPATH_VERSION" "$LOCALPATH_VERSION")" "" \
    "local-path-provisioner:github.com/rancher/local-path-provisioner"
}

case "${1:-all}" in
  all) build_kubernetes; build_etcd; build_coredns; build_crictl; build_kuberay; build_local_path ;;
  kubernetes) build_kubernetes ;;
  etcd) build_etcd ;;
  coredns) build_coredns ;;
  kuberay) build_kuberay ;;
  crictl) build_crictl ;;
  local-path) build_local_path ;;
  *) die "usage: $0 [all|kubernetes|etcd|coredns|kuberay|crictl|local-path]" ;;
esac
