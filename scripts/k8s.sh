#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, built only from package registries:
# Kubernetes, etcd, CoreDNS, crictl, KubeRay and the local-path provisioner from Go
# modules (scripts/k8s/build.sh), containerd, runc and the CNI plugins from Debian, every
# image from Debian's packages, PyPI and Maven Central (scripts/k8s/images.sh). See
# deploy/test-cluster/README.md.
#
#   scripts/k8s.sh build        build (or find cached) binaries and images
#   scripts/k8s.sh up           build, then start the cluster: etcd, API server,
#                               controller-manager, scheduler, containerd, kubelet,
#                               kube-proxy; CoreDNS, the default StorageClass, the KubeRay
#                               operator and CRDs, Kafka, Milvus and PostgreSQL
#                               (K8S_DEPS=0: only the cluster, DNS and storage;
#                               K8S_BUILD=0: skip the build step, use the cache)
#   scripts/k8s.sh down         stop every process by its pid; remove the pods, mounts,
#                               network namespaces, iptables rules, bridge and address
#                               the cluster made
#   scripts/k8s.sh deps         (re)import images, (re)apply the dependencies to a running cluster
#   scripts/k8s.sh status       processes and nodes
#   scripts/k8s.sh smoke        check the running cluster (scripts/k8s/smoke.sh)
#   scripts/k8s.sh kubeconfig   print the admin kubeconfig's path
#   scripts/k8s.sh kubectl ARGS kubectl with that kubeconfig
#   scripts/k8s.sh env          print `export KUBECONFIG=... PATH=...` lines (eval them)
#
# Root is needed (containers, network namespaces, iptables, mounts). State, logs and
# certificates of the running cluster live in $K8S_CACHE/run (see scripts/k8s/lib.sh).
set -euo pipefail
# shellcheck source=scripts/k8s/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/k8s/lib.sh"
# shellcheck source=scripts/k8s/pki.sh
source "$REPO/scripts/k8s/pki.sh"

KBIN="$BIN_ROOT/kubernetes-$K8S_VERSION"
ETCD="$BIN_ROOT/etcd-$ETCD_VERSION/etcd"
CRICTL="$BIN_ROOT/crictl-$CRITOOLS_VERSION/crictl"
PKI="$RUN_DIR/pki"
LOGS="$RUN_DIR/logs"
PIDS="$RUN_DIR/pids"
CTRD_ROOT="$K8S_CACHE/containerd"     # content and snapshots: imported images stay
CTRD_STATE="$RUN_DIR/containerd"      # tasks, shims' sockets, network namespaces
CTRD_SOCK="$CTRD_STATE/containerd.sock"
CGROUP_ROOT="/facestream-k8s"         # kubelet's cgroupRoot: pods' cgroups live below it
MANIFESTS="$REPO/deploy/test-cluster"
ETCD_PORT=12379                       # not 2379: other etcds on this machine (Milvus')
# Start order; `down` stops in reverse.
PROCS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)

kubectl() { "$KBIN/kubectl" --kubeconfig "$RUN_DIR/admin.kubeconfig" "$@"; }
ctr() { command ctr --address "$CTRD_SOCK" "$@"; }
crictl() { "$CRICTL" --runtime-endpoint "unix://$CTRD_SOCK" --image-endpoint "unix://$CTRD_SOCK" "$@"; }

# ---- processes -------------------------------------------------------------------------

# start NAME BINARY ARGS...: runs it in its own session (it outlives this script), logs to
# logs/NAME.log, pid in pids/NAME.pid.
start() {
  local name="$1"
  shift
  setsid "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
  log "started $name (pid $!)"
}

# The pid of NAME while that process still runs the binary it was started with.
pid_of() {
  local f="$PIDS/$1.pid" pid exe
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  exe="${exe% (deleted)}"   # the binary was rebuilt meanwhile
  [[ "$(basename "$exe")" == "$1" ]] || return 1
  echo "$pid"
}

stop_proc() {
  local name="$1" pid i
  pid="$(pid_of "$name")" || { rm -f "$PIDS/$name.pid"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    alive "$pid" || break
    sleep 0.2
  done
  if alive "$pid"; then
    log "$name (pid $pid) ignored SIGTERM for 30 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.1; done
  fi
  rm -f "$PIDS/$name.pid"
  log "stopped $name (pid $pid)"
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local what="$1" secs="$2" i
  shift 2
  for ((i = 0; i < secs * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  die "$what not ready after ${secs}s (logs: $LOGS)"
}

# ---- host setup ------------------------------------------------------------------------

host_packages() {
  local missing=() p
  for p in containerd runc iptables conntrack ip; do
    command -v "$p" >/dev/null || missing+=("$p")
  done
  [[ -x /usr/lib/cni/bridge ]] || missing+=(cni)
  [[ ${#missing[@]} == 0 ]] && return
  log "installing Debian packages for: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    containerd runc containernetworking-plugins iptables conntrack iproute2 >/dev/null
}

# Sysctls the pod network needs; their old values are saved so `down` puts them back.
set_sysctl() {
  local key="$1" val="$2" path="/proc/sys/${1//.//}"
  [[ -f "$path" ]] || return 0
  if [[ ! -f "$RUN_DIR/host/sysctl.$key" ]]; then cat "$path" >"$RUN_DIR/host/sysctl.$key"; fi
  echo "$val" >"$path"
}

host_network_up() {
  mkdir -p "$RUN_DIR/host"
  # The node address: a /32 on lo, reachable from pods (via the bridge) and from this
  # machine, not from outside it.
  if ! ip -4 addr show dev lo | grep -q " $NODE_IP/32"; then
    ip addr add "$NODE_IP/32" dev lo
    touch "$RUN_DIR/host/node-ip-added"
  fi
  set_sysctl net.ipv4.ip_forward 1                    # pod traffic is routed by the host
  set_sysctl net.bridge.bridge-nf-call-iptables 1     # Service DNAT for bridged traffic
}

# ---- configuration ---------------------------------------------------------------------

write_configs() {
  mkdir -p "$RUN_DIR/cni/net.d" "$RUN_DIR/cni/ipam"
  # Pod network: one bridge, host-local addresses from the node's pod CIDR, masquerade
  # to the outside, portmap for hostPort, loopback in every pod.
  cat >"$RUN_DIR/cni/net.d/10-facestream.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "fsk8s",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$RUN_DIR/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  mkdir -p "$CTRD_ROOT" "$CTRD_STATE"
  # containerd of our own (root, state, socket): no clash with a system containerd.
  # restrict_oom_score_adj: this machine refuses a negative oom_score_adj, which the CRI
  # sets for every sandbox (runc then fails with "can't get final child's PID from pipe").
  # netns_mounts_under_state_dir: pods' network namespaces under our state folder.
  cat >"$RUN_DIR/containerd.toml" <<EOF
version = 2
root = "$CTRD_ROOT"
state = "$CTRD_STATE"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_STATE/containerd.sock.ttrpc"
[debug]
  address = "$CTRD_STATE/debug.sock"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD_STATE/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/facestream/pause:$PAUSE_TAG"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$CTRD_STATE/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RUN_DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = ""
EOF

  cat >"$RUN_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1, which kubelet >= 1.35 refuses unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failSwapOn: false
containerRuntimeEndpoint: unix://$CTRD_SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-server.crt
tlsPrivateKeyFile: $PKI/kubelet-server.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: /etc/resolv.conf
podLogsDir: $RUN_DIR/pod-logs
volumePluginDir: $RUN_DIR/kubelet/volume-plugins
staticPodPath: ""
# Imported images cannot be pulled again: keep the image GC away from them, and evict
# only when the disk is really full (the disk is shared with other work).
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
evictionHard:
  memory.available: 200Mi
  nodefs.available: 2%
  imagefs.available: 2%
  nodefs.inodesFree: 1%
serializeImagePulls: false
maxPods: 110
EOF

  cat >"$RUN_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $RUN_DIR/kube-proxy.kubeconfig
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: 10.244.0.0/16
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts answer on the node address only (never on eth0); no 127.0.0.1 NodePorts
# (they need route_localnet).
nodePortAddresses: ["$NODE_IP/32"]
iptables:
  localhostNodePorts: false
# Leave the host's conntrack sysctls alone (0 = do not set).
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

# ---- up --------------------------------------------------------------------------------

cgroups_up() {
  # kubelet wants its cgroupRoot to exist in every hierarchy; a new cpuset cgroup has no
  # CPUs or memory nodes until given its parent's.
  local d
  for d in /sys/fs/cgroup/*/; do
    [[ -L "${d%/}" ]] && continue
    mkdir -p "$d${CGROUP_ROOT#/}"
    if [[ -f "$d/cpuset.cpus" ]]; then
      cat "$d/cpuset.cpus" >"$d${CGROUP_ROOT#/}/cpuset.cpus"
      cat "$d/cpuset.mems" >"$d${CGROUP_ROOT#/}/cpuset.mems"
    fi
  done
}

api_ready() {
  curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://$NODE_IP:$API_PORT/readyz" >/dev/null
}

import_images() {
  local images="$K8S_CACHE/images" f name ref have tar
  have="$(ctr -n k8s.io images ls -q)"
  for f in "$images"/*.ref; do
    name="$(basename "$f" .ref)"
    ref="$(cat "$f")"
    tar="$images/$name-${ref##*:}.tar"
    if [[ ! -s "$tar" ]]; then
      log "no image tarball for $ref (scripts/k8s.sh build): not imported"
      continue
    fi
    if ! grep -qx "$ref" <<<"$have"; then
      log "importing $ref into containerd"
      ctr -n k8s.io images import --snapshotter overlayfs "$tar" >/dev/null
    fi
    # The stable names the manifests use. The pause image is also the sandbox image.
    ctr -n k8s.io images tag --force "$ref" "localhost/facestream/$name:test" >/dev/null
    if [[ "$name" == pause ]]; then
      ctr -n k8s.io images tag --force "$ref" "localhost/facestream/pause:$PAUSE_TAG" >/dev/null
    fi
    # Former builds of this image: each rebuild of the facestream image left ~11 GB of
    # layers behind. Removing their names lets containerd's GC take the content.
    local old
    for old in $(grep -E "^localhost/facestream/$name:" <<<"$have" || true); do
      case "${old##*:}" in
        "${ref##*:}" | test | "$PAUSE_TAG") ;;
        *) log "removing the former image $old"; ctr -n k8s.io images rm --sync "$old" >/dev/null || true ;;
      esac
    done
  done
}

node_ready() {
  [[ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

cmd_build() {
  bash "$REPO/scripts/k8s/build.sh" all
  bash "$REPO/scripts/k8s/images.sh" "${@:-all}"
}

cmd_up() {
  [[ "$(id -u)" == 0 ]] || die "up needs root (containers, network namespaces, iptables)"
  local p
  for p in "${PROCS[@]}"; do
    if pid_of "$p" >/dev/null; then die "a cluster is running ($p); scripts/k8s.sh down first"; fi
  done
  host_packages
  if [[ "${K8S_BUILD:-1}" == 1 ]]; then cmd_build; fi   # K8S_BUILD=0: use what is cached
  local start=$SECONDS
  cleanup_host    # leftovers of a run that was not brought down (a crash, a reboot)
  if awk '{print $5}' /proc/self/mountinfo | grep -qE "^$RUN_DIR/"; then
    die "mounts remain under $RUN_DIR (see /proc/self/mountinfo); not deleting it"
  fi
  rm -rf --one-file-system "$RUN_DIR"
  mkdir -p "$LOGS" "$PIDS" "$RUN_DIR/etcd" "$RUN_DIR/pod-logs" "$RUN_DIR/kubelet"
  chmod 700 "$RUN_DIR/etcd"
  make_pki
  host_network_up
  write_configs
  cgroups_up

  start etcd "$ETCD" --name default --data-dir "$RUN_DIR/etcd" \
    --listen-client-urls "https://127.0.0.1:$ETCD_PORT" --advertise-client-urls "https://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "https://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "https://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "default=https://127.0.0.1:$((ETCD_PORT + 1))" \
    --cert-file "$PKI/etcd-server.crt" --key-file "$PKI/etcd-server.key" \
    --client-cert-auth --trusted-ca-file "$PKI/ca.crt" \
    --peer-cert-file "$PKI/etcd-server.crt" --peer-key-file "$PKI/etcd-server.key" \
    --peer-client-cert-auth --peer-trusted-ca-file "$PKI/ca.crt" \
    --log-level warn

  start kube-apiserver "$KBIN/kube-apiserver" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
    --etcd-servers "https://127.0.0.1:$ETCD_PORT" --etcd-cafile "$PKI/ca.crt" \
    --etcd-certfile "$PKI/apiserver-etcd-client.crt" --etcd-keyfile "$PKI/apiserver-etcd-client.key" \
    --client-ca-file "$PKI/ca.crt" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" --kubelet-preferred-address-types InternalIP \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer "https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC --anonymous-auth=false \
    --enable-admission-plugins NodeRestriction --allow-privileged=true \
    --profiling=false --v 1
  wait_for "kube-apiserver" 120 api_ready

  start kube-controller-manager "$KBIN/kube-controller-manager" \
    --kubeconfig "$RUN_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$RUN_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$RUN_DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false \
    --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
    --root-ca-file "$PKI/ca.crt" --service-account-private-key-file "$PKI/sa.key" \
    --use-service-account-credentials=true \
    --allocate-node-cidrs=true --cluster-cidr 10.244.0.0/16 --node-cidr-mask-size 24 \
    --service-cluster-ip-range "$SERVICE_CIDR" --profiling=false --v 1
  start kube-scheduler "$KBIN/kube-scheduler" \
    --kubeconfig "$RUN_DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$RUN_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$RUN_DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false --v 1

  start containerd "$(command -v containerd)" --config "$RUN_DIR/containerd.toml"
  wait_for containerd 60 ctr version
  import_images

  start kubelet "$KBIN/kubelet" --config "$RUN_DIR/kubelet.yaml" \
    --kubeconfig "$RUN_DIR/kubelet.kubeconfig" --root-dir "$RUN_DIR/kubelet" \
    --cert-dir "$RUN_DIR/kubelet/pki" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1
  start kube-proxy "$KBIN/kube-proxy" --config "$RUN_DIR/kube-proxy.yaml" --v 1
  wait_for "node $NODE_NAME Ready" 180 node_ready
  log "node $NODE_NAME Ready ($((SECONDS - start))s after start)"

  apply_addons
  log "cluster up in $((SECONDS - start))s; KUBECONFIG=$RUN_DIR/admin.kubeconfig"
}

# kubectl apply a manifest of deploy/test-cluster, with NODE-specific values filled in.
apply_manifest() {
  sed -e "s#@NODE_IP@#$NODE_IP#g" -e "s#@DNS_SERVICE_IP@#$DNS_SERVICE_IP#g" \
    -e "s#@CLUSTER_DOMAIN@#$CLUSTER_DOMAIN#g" -e "s#@STORAGE_DIR@#$RUN_DIR/volumes#g" \
    "$MANIFESTS/$1" | kubectl apply --server-side --force-conflicts -f - >/dev/null
  log "applied $1"
}

rollout() {
  kubectl -n "$1" rollout status "$2" --timeout "${3:-300s}" >/dev/null ||
    { kubectl -n "$1" get pods -o wide >&2; kubectl -n "$1" describe "$2" >&2 | tail -30; die "$1/$2 not ready"; }
  log "$1/$2 ready"
}

apply_addons() {
  mkdir -p "$RUN_DIR/volumes"
  apply_manifest coredns.yaml
  apply_manifest local-path-storage.yaml
  rollout kube-system deployment/coredns
  rollout local-path-storage deployment/local-path-provisioner
  [[ "${K8S_DEPS:-1}" == 1 ]] || return 0
  apply_deps
}

# The KubeRay operator and CRDs, PostgreSQL, Kafka and Milvus (idempotent).
apply_deps() {
  local crds
  crds="$(mod_dir "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION")/config/crd/bases"
  # Server-side: the CRDs are larger than client-side apply's last-applied annotation.
  kubectl apply --server-side --force-conflicts -f "$crds" >/dev/null
  log "applied the KubeRay $KUBERAY_VERSION CRDs"
  apply_manifest kuberay-operator.yaml
  # The catalogue's password: random for each cluster, kept in the run folder (0600) for
  # whoever installs the chart (its Secret must be in the release's namespace too).
  kubectl create namespace postgres --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  if [[ ! -s "$RUN_DIR/postgres-password" ]]; then
    head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$RUN_DIR/postgres-password"
    chmod 600 "$RUN_DIR/postgres-password"
  fi
  kubectl -n postgres create secret generic postgres-postgresql \
    --from-file=password="$RUN_DIR/postgres-password" --dry-run=client -o yaml |
    kubectl apply -f - >/dev/null
  apply_manifest postgres.yaml
  apply_manifest kafka.yaml
  apply_manifest milvus.yaml
  rollout kuberay-system deployment/kuberay-operator
  rollout postgres statefulset/postgres-postgresql
  rollout kafka statefulset/my-kafka-kafka
  rollout milvus statefulset/milvus 600s
}

# ---- down ------------------------------------------------------------------------------

# Everything `up` changed on the host, in an order that works whatever is still running.
cleanup_host() {
  [[ -d "$RUN_DIR" ]] || return 0
  # Pods: through the CRI, so that each sandbox's CNI teardown (veth, IP lease, portmap
  # rules) and network namespace removal happen.
  if [[ -S "$CTRD_SOCK" ]] && pid_of containerd >/dev/null && [[ -x "$CRICTL" ]]; then
    crictl rmp --all --force >/dev/null 2>&1 || true
    crictl rm --all --force >/dev/null 2>&1 || true
  fi
  stop_proc containerd
  # Shims outlive containerd by design; ours name our socket on their command line.
  local f pid
  for f in /proc/[0-9]*/cmdline; do
    pid="${f#/proc/}" pid="${pid%/cmdline}"
    if { tr "\0" " " <"$f"; } 2>/dev/null | grep -q -- "containerd-shim.*-address $CTRD_SOCK"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # Mounts under our folders (container root filesystems, pods' volumes and tokens,
  # network namespaces), deepest first.
  local m
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done < <(awk '{print $5}' /proc/self/mountinfo | { grep -E "^($RUN_DIR|$CTRD_ROOT)/" || true; } | sort -r)
  # iptables: kube-proxy's own cleanup, then the CNI chains of any sandbox whose teardown
  # did not run (their comments name our network).
  if [[ -x "$KBIN/kube-proxy" ]]; then
    "$KBIN/kube-proxy" --cleanup --config "$RUN_DIR/kube-proxy.yaml" >/dev/null 2>&1 || true
  fi
  cleanup_cni_iptables
  cleanup_kubelet_iptables
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
  if [[ -f "$RUN_DIR/host/node-ip-added" ]]; then
    ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
    rm -f "$RUN_DIR/host/node-ip-added"
  fi
  for f in "$RUN_DIR"/host/sysctl.*; do
    [[ -f "$f" ]] || continue
    local key="${f##*/sysctl.}"
    cat "$f" >"/proc/sys/${key//.//}" 2>/dev/null || true
    rm -f "$f"
  done
  # Pod cgroups (empty once the containers are gone), deepest first.
  local d
  for d in /sys/fs/cgroup/*/"${CGROUP_ROOT#/}"; do
    if [[ -d "$d" ]]; then find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
  # libcni's result cache for our network (in /var/lib/cni, which containerd 1.6 cannot move).
  rm -f /var/lib/cni/results/fsk8s-* 2>/dev/null || true
}

# The bridge plugin's masquerade chains and the portmap plugin's per-pod chains carry a
# comment naming our network ("name: \"fsk8s\" id: ..."): delete the rules that mention
# it, then the chains they jumped to; then portmap's shared chains if they are empty.
cleanup_cni_iptables() {
  command -v iptables-save >/dev/null || return 0
  local table rule chain chains
  for table in nat filter; do
    chains="$(iptables-save -t "$table" | grep -E '^-A .*fsk8s' |
      grep -oE -- '-j CNI-[A-Za-z0-9_-]+' | awk '{print $2}' | sort -u || true)"
    { iptables-save -t "$table" | grep -E '^-A .*fsk8s' || true; } | while read -r rule; do
      eval "iptables -t $table ${rule/-A/-D}" 2>/dev/null || true
    done
    for chain in $chains; do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
    for chain in CNI-HOSTPORT-DNAT CNI-HOSTPORT-SNAT CNI-HOSTPORT-MASQ CNI-HOSTPORT-SETMARK; do
      iptables-save -t "$table" | grep -qE "^-A $chain " && continue   # still used
      iptables-save -t "$table" | grep -qE "^:$chain " || continue
      { iptables-save -t "$table" | grep -E "^-A .*-j $chain( |$)" || true; } | while read -r rule; do
        eval "iptables -t $table ${rule/-A/-D}" 2>/dev/null || true
      done
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

# The kubelet's own chains, which `kube-proxy --cleanup` leaves: KUBE-FIREWALL (a DROP of
# non-local traffic to 127.0.0.0/8, jumped to from INPUT and OUTPUT), the canaries it
# watches for a flushed table, and the hint chain of iptables-wrapper.
cleanup_kubelet_iptables() {
  command -v iptables-save >/dev/null || return 0
  local table chain rule
  for chain in INPUT OUTPUT; do
    while iptables -t filter -D "$chain" -j KUBE-FIREWALL 2>/dev/null; do :; done
  done
  for table in filter nat mangle; do
    for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
      iptables-save -t "$table" | grep -qE "^:$chain " || continue
      { iptables-save -t "$table" | grep -E "^-A .*-j $chain( |$)" || true; } | while read -r rule; do
        eval "iptables -t $table ${rule/-A/-D}" 2>/dev/null || true
      done
      iptables -t "$table" -F "$chain" 2>/dev/null || true
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

cmd_down() {
  [[ "$(id -u)" == 0 ]] || die "down needs root"
  local i
  for ((i = ${#PROCS[@]} - 1; i >= 0; i--)); do
    [[ "${PROCS[$i]}" == containerd ]] && continue   # after the pods are removed
    stop_proc "${PROCS[$i]}"
  done
  cleanup_host
  log "down; logs stay in $LOGS"
}

cmd_status() {
  local p pid rc=0
  for p in "${PROCS[@]}"; do
    if pid="$(pid_of "$p")"; then echo "$p: running (pid $pid)"; else echo "$p: not running"; rc=1; fi
  done
  if [[ "$rc" == 0 ]]; then
    kubectl get nodes -o wide
    kubectl get pods -A -o wide
  fi
  return "$rc"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  smoke) bash "$REPO/scripts/k8s/smoke.sh" ;;
  deps) pid_of kube-apiserver >/dev/null || die "no cluster running"; import_images; apply_deps ;;
  kubeconfig) echo "$RUN_DIR/admin.kubeconfig" ;;
  kubectl) shift; kubectl "$@" ;;
  env)
    echo "export KUBECONFIG=$RUN_DIR/admin.kubeconfig"
    echo "export PATH=$KBIN:\$PATH"
    ;;
  *) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
