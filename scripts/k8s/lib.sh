# shellcheck shell=bash
# shellcheck disable=SC2034  # the settings are used by the scripts that source this
# Shared settings and helpers of scripts/k8s.sh and scripts/k8s/*.sh (sourced, not run).
#
# Everything is cached under $FACESTREAM_CACHE/k8s (default ~/.cache/facestream/k8s):
#   bin/<component>-<version>/   binaries built from Go modules (kept across runs)
#   src/<component>-<version>/   the wrapper Go modules they are built from
#   images/                      image tarballs (OCI archives), named by input hash
#   buildah/                     buildah's own storage (not the system's)
#   containerd/                  containerd's content store and snapshots (images stay
#                                imported between `up`s; containers are removed by `down`)
#   run/                         the state of the running cluster: certificates, configs,
#                                logs, pid files (wiped by `up`, left for reading after `down`)

CACHE="${FACESTREAM_CACHE:-$HOME/.cache/facestream}"
K8S_CACHE="$CACHE/k8s"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# One release of each part. Kubernetes' staging modules are tagged v0.<minor>.<patch>.
K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.7.3}"          # kubernetes v1.37 requires etcd client v3.7
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
KUBERAY_VERSION="${KUBERAY_VERSION:-v1.5.1}"    # the chart needs >= 1.5.1 (Ray token auth)
CRITOOLS_VERSION="${CRITOOLS_VERSION:-v1.37.0}" # crictl: `down` removes pods through the CRI
LOCALPATH_VERSION="${LOCALPATH_VERSION:-v0.0.30}"
PAUSE_TAG="3.10.2"             # as upstream's build/pause of this release

BIN_ROOT="$K8S_CACHE/bin"
RUN_DIR="${K8S_RUN_DIR:-$K8S_CACHE/run}"

# Addresses. The API server and the kubelet must be reachable from pods (KubeRay's
# operator, CoreDNS and the Ray autoscaler talk to the API), so they cannot listen on
# 127.0.0.1 alone; they listen on NODE_IP, a /32 added to `lo` by `up`: local to this
# machine, never on eth0. Everything else listens on 127.0.0.1.
NODE_NAME="${K8S_NODE_NAME:-facestream-node}"
NODE_IP="${K8S_NODE_IP:-10.250.250.1}"
POD_CIDR="${K8S_POD_CIDR:-10.244.0.0/24}"
SERVICE_CIDR="${K8S_SERVICE_CIDR:-10.96.0.0/16}"
API_SERVICE_IP="10.96.0.1"    # the first address of SERVICE_CIDR: the `kubernetes` Service
DNS_SERVICE_IP="10.96.0.10"
CLUSTER_DOMAIN="cluster.local"
API_PORT=6443
BRIDGE="fsk8s0"               # the CNI bridge: a name of ours, so `down` knows what to delete

log() { printf '[k8s] %s\n' "$*" >&2; }
die() { printf 'k8s: %s\n' "$*" >&2; exit 1; }

alive() {
  # kill -0 alone is fooled by zombies, which linger where nothing reaps orphans.
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# Builds run beside other people's tests on 2 cores: low priority, two jobs at most.
nice_go() { nice -n 10 env GOFLAGS=-mod=mod CGO_ENABLED=0 go "$@"; }

# The directory of a downloaded module version (from the Go module proxy).
mod_dir() {
  (cd "$(mktemp -d)" && GOFLAGS=-mod=mod go mod download -json "$1" |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error")))')
}
