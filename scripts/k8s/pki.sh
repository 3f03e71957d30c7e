# shellcheck shell=bash
# Certificates of one cluster run (sourced by scripts/k8s.sh): a CA made for the run, and
# one key and certificate per component, signed by it. Nothing here outlives the run
# folder. Identities follow kubeadm's: the API server authorises by CN (user) and
# O (groups), e.g. the kubelet as system:node:<name> in system:nodes.

# cert NAME CN O SANS [ext]: writes $PKI/NAME.{key,crt}. SANS: "DNS:a,IP:1.2.3.4" or "".
cert() {
  local name="$1" cn="$2" org="$3" sans="$4" usage="${5:-clientAuth}"
  local subj="/CN=$cn"
  [[ -n "$org" ]] && subj="/O=$org$subj"
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n "$sans" ]] && echo "subjectAltName=$sans"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 30 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# kubeconfig NAME CERT: a kubeconfig for the API server with that client certificate.
kubeconfig() {
  local name="$1" crt="$2"
  cat >"$RUN_DIR/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: facestream
  cluster:
    certificate-authority: $PKI/ca.crt
    server: https://$NODE_IP:$API_PORT
users:
- name: $name
  user:
    client-certificate: $PKI/$crt.crt
    client-key: $PKI/$crt.key
contexts:
- name: facestream
  context: {cluster: facestream, user: $name}
current-context: facestream
EOF
  chmod 600 "$RUN_DIR/$name.kubeconfig"
}

make_pki() {
  PKI="$RUN_DIR/pki"
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=facestream-test-cluster-ca" -days 30 \
    -sha256 -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out "$PKI/ca.crt" 2>/dev/null
  local api_sans="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  api_sans+=",DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost"
  api_sans+=",IP:$NODE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1"
  cert apiserver kube-apiserver "" "$api_sans" serverAuth
  cert etcd-server etcd "" "DNS:localhost,IP:127.0.0.1" serverAuth,clientAuth
  cert apiserver-etcd-client kube-apiserver-etcd-client "" ""
  # The API server's identity towards kubelets (logs, exec, port-forward).
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters ""
  cert kubelet-server "$NODE_NAME" "" "DNS:$NODE_NAME,IP:$NODE_IP" serverAuth
  cert kubelet "system:node:$NODE_NAME" system:nodes ""
  cert controller-manager system:kube-controller-manager "" ""
  cert scheduler system:kube-scheduler "" ""
  cert kube-proxy system:kube-proxy "" ""
  # The administrator of this test cluster (kubectl, the scripts and the e2e test).
  cert admin facestream-admin system:masters ""
  # Service account tokens are signed with this key pair.
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  chmod 600 "$PKI"/*.key
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
  kubeconfig kubelet kubelet
  kubeconfig kube-proxy kube-proxy
}
