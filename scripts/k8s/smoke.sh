#!/usr/bin/env bash
# Checks that the test cluster of scripts/k8s.sh works, each by waiting for the outcome:
#   1. the node is Ready
#   2. a pod of the facestream image runs `facestream --help` as uid 65532
#   3. CoreDNS resolves Service names from a pod
#   4. a ClusterIP Service reaches a pod behind it
#   5. the dependencies' Services answer from a pod (Kafka, Milvus, PostgreSQL)
#   6. the KubeRay operator reconciles a one-node RayCluster (head pod Ready)
# Everything is made in the namespace fs-smoke, deleted at the end (K8S_SMOKE_KEEP=1 keeps it).
#
#   scripts/k8s/smoke.sh
set -euo pipefail
# shellcheck source=scripts/k8s/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NS=fs-smoke
KUBECTL="$BIN_ROOT/kubernetes-$K8S_VERSION/kubectl"
kubectl() { "$KUBECTL" --kubeconfig "$RUN_DIR/admin.kubeconfig" "$@"; }
IMAGE=localhost/facestream/facestream:test
SECURITY='{"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}'
CSEC='{"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}'
failed=0

ok() { printf '[smoke] ok: %s\n' "$*"; }
bad() { printf '[smoke] FAILED: %s\n' "$*" >&2; failed=1; }

# run_pod NAME IMAGE COMMAND...: a pod that runs once; prints its log; fails if it did.
run_pod() {
  local name="$1" image="$2"
  shift 2
  local cmd
  cmd="$(printf '%s\n' "$@" | python3 -c 'import json, sys; print(json.dumps(sys.stdin.read().splitlines()))')"
  kubectl -n "$NS" apply -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "$name"},
 "spec": {"restartPolicy": "Never", "securityContext": $SECURITY,
  "containers": [{"name": "main", "image": "$image", "imagePullPolicy": "Never",
    "command": $cmd, "securityContext": $CSEC,
    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}]}}
EOF
  local phase i
  for ((i = 0; i < 300; i++)); do
    phase="$(kubectl -n "$NS" get pod "$name" -o jsonpath='{.status.phase}')"
    [[ "$phase" == Succeeded || "$phase" == Failed ]] && break
    sleep 1
  done
  kubectl -n "$NS" logs "$name" 2>&1 || true
  if [[ "$phase" != Succeeded ]]; then
    kubectl -n "$NS" describe pod "$name" | tail -20 >&2
    return 1
  fi
}

# 1
if [[ "$(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]; then
  ok "node $NODE_NAME Ready: $(kubectl get node "$NODE_NAME" --no-headers -o wide | tr -s ' ')"
else
  bad "node $NODE_NAME not Ready"
fi
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

# 2
if out="$(run_pod help "$IMAGE" sh -c 'echo "uid=$(id -u) gid=$(id -g)"; facestream --help')"; then
  echo "$out" | head -12
  grep -q '^uid=65532 gid=65532$' <<<"$out" && grep -qi 'usage' <<<"$out" &&
    ok "facestream --help ran as uid 65532" || bad "facestream --help: unexpected output"
else
  bad "facestream --help pod failed"
fi

# 4 (first, so that 3 can look its Service up too): an HTTP server behind a Service.
kubectl -n "$NS" apply -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "List", "items": [
 {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "web"}},
  "spec": {"securityContext": $SECURITY,
   "containers": [{"name": "web", "image": "$IMAGE", "imagePullPolicy": "Never",
     "command": ["python3", "-c", "import http.server as h; h.HTTPServer(('', 8080), type('H', (h.BaseHTTPRequestHandler,), {'do_GET': lambda s: (s.send_response(200), s.end_headers(), s.wfile.write(b'hello from the web pod'))})).serve_forever()"],
     "securityContext": $CSEC, "ports": [{"containerPort": 8080}],
     "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2},
     "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}]}},
 {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
  "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}]}
EOF
kubectl -n "$NS" wait --for=condition=Ready pod/web --timeout 300s >/dev/null || bad "web pod not Ready"
ip="$(kubectl -n "$NS" get service web -o jsonpath='{.spec.clusterIP}')"
if out="$(run_pod curl-web "$IMAGE" wget -qO- -T 10 "http://$ip/")" && grep -q 'hello from the web pod' <<<"$out"; then
  ok "ClusterIP $ip:80 reached the web pod: $out"
else
  bad "ClusterIP $ip did not reach the web pod: $out"
fi

# 3
if out="$(run_pod dns "$IMAGE" sh -c 'getent hosts kubernetes.default.svc.cluster.local web web.fs-smoke.svc.cluster.local my-kafka-kafka-bootstrap.kafka milvus.milvus postgres-postgresql.postgres; cat /etc/resolv.conf; wget -qO- -T 10 http://web/')"; then
  echo "$out"
  grep -q 'hello from the web pod' <<<"$out" && ok "CoreDNS resolved Service names; http://web/ answered by name" ||
    bad "the Service name did not reach the pod"
else
  bad "DNS lookups from a pod failed: $out"
fi

# 5
deps='import socket, sys
for host, port in [("my-kafka-kafka-bootstrap.kafka", 9092), ("milvus.milvus", 19530), ("postgres-postgresql.postgres", 5432)]:
    socket.create_connection((host, port), timeout=10).close()
    print(f"{host}:{port} answers")'
if out="$(run_pod deps "$IMAGE" python3 -c "$deps")"; then
  echo "$out"
  ok "Kafka, Milvus and PostgreSQL Services answer from a pod"
else
  bad "a dependency did not answer: $out"
fi

# 6
kubectl -n "$NS" apply -f - >/dev/null <<EOF
{"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "smoke"},
 "spec": {"rayVersion": "2.60.0", "authOptions": {"mode": "token"},
  "headGroupSpec": {"rayStartParams": {"num-cpus": "1"},
   "template": {"spec": {"securityContext": $SECURITY,
    "containers": [{"name": "ray-head", "image": "$IMAGE", "imagePullPolicy": "Never",
      "securityContext": $CSEC,
      "resources": {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "3Gi"}}}]}}}}}
EOF
state=""
for ((i = 0; i < 120; i++)); do
  state="$(kubectl -n "$NS" get raycluster smoke -o jsonpath='{.status.state}' 2>/dev/null || true)"
  [[ "$state" == ready ]] && break
  sleep 5
done
if [[ "$state" == ready ]]; then
  ok "RayCluster smoke ready: $(kubectl -n "$NS" get pods -l ray.io/cluster=smoke --no-headers | tr -s ' ')"
else
  kubectl -n "$NS" get raycluster smoke -o yaml | sed -n '/^status:/,$p' >&2
  kubectl -n "$NS" get pods -l ray.io/cluster=smoke -o wide >&2
  bad "RayCluster smoke not ready (state '$state')"
fi

if [[ "${K8S_SMOKE_KEEP:-0}" != 1 ]]; then
  kubectl delete namespace "$NS" --wait=true --timeout 180s >/dev/null || true
fi
[[ "$failed" == 0 ]] && echo "[smoke] all checks passed" || { echo "[smoke] some checks failed" >&2; exit 1; }
