# shellcheck shell=bash
# Certificates, keys and kubeconfigs of the local cluster, made with openssl (sourced by
# up.sh). Generated once into $PKI and kept across cluster-down/up; delete $PKI (or run
# `down.sh --purge`) to start over. One CA signs everything; client certificates carry
# the identities RBAC and the Node authorizer expect.

# make_cert NAME SUBJECT [SAN]: key + certificate signed by the cluster CA.
make_cert() {
  local name="$1" subj="$2" san="${3:-}"
  local ext="$PKI/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$san" ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

# make_kubeconfig FILE CERT_NAME SERVER
make_kubeconfig() {
  local file="$1" cert="$2" server="$3"
  cat >"$file" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: lameduck
  cluster:
    certificate-authority: $PKI/ca.crt
    server: $server
users:
- name: $cert
  user:
    client-certificate: $PKI/$cert.crt
    client-key: $PKI/$cert.key
contexts:
- name: lameduck
  context: {cluster: lameduck, user: $cert}
current-context: lameduck
KUBECONFIG
}

ensure_pki() {
  if [[ -f "$PKI/.complete" ]]; then
    return 0
  fi
  log "generating certificates and service-account keys in $PKI"
  rm -rf "$PKI"; mkdir -p "$PKI"; chmod 700 "$PKI"
  openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=lameduck-cluster-ca" -days 3650 \
    -sha256 -out "$PKI/ca.crt" 2>/dev/null
  # Service-account token signing key pair.
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null

  local api_san="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  api_san+=",DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  api_san+=",IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP"
  make_cert apiserver "/CN=kube-apiserver" "$api_san"
  make_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  make_cert admin "/O=system:masters/CN=kubernetes-admin"
  make_cert controller-manager "/CN=system:kube-controller-manager"
  make_cert scheduler "/CN=system:kube-scheduler"
  make_cert kube-proxy "/CN=system:kube-proxy"
  # The Node authorizer and NodeRestriction key off this exact identity.
  make_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  make_cert kubelet-server "/CN=$NODE_NAME" "DNS:$NODE_NAME,DNS:localhost,IP:$NODE_IP,IP:127.0.0.1"
  chmod 600 "$PKI"/*.key
  touch "$PKI/.complete"
}

write_kubeconfigs() {
  local local_api="https://127.0.0.1:$APISERVER_PORT"
  make_kubeconfig "$KUBECONFIG_ADMIN" admin "$local_api"
  make_kubeconfig "$CONF/controller-manager.kubeconfig" controller-manager "$local_api"
  make_kubeconfig "$CONF/scheduler.kubeconfig" scheduler "$local_api"
  make_kubeconfig "$CONF/kubelet.kubeconfig" kubelet "$local_api"
  make_kubeconfig "$CONF/kube-proxy.kubeconfig" kube-proxy "$local_api"
}
