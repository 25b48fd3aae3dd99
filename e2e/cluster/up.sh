#!/usr/bin/env bash
# Brings up the single-node local cluster (idempotent):
#   etcd -> kube-apiserver -> kube-controller-manager, kube-scheduler
#        -> the registry -> containerd (+ pause/testapp images) -> kubelet, kube-proxy
# If a healthy cluster is already running it only prints the KUBECONFIG line. Anything
# else (a half-started or killed previous run) is first cleaned away with down.sh, then the
# cluster starts from an empty etcd. Daemons run detached (setsid) with logs in $LOGS and
# PID files in $PIDS, so they outlive the make invocation that started them.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=pki.sh
source "$CLUSTER_HERE/pki.sh"
require_root
lock_cluster

start=$SECONDS

for b in "$K8S_BIN"/{kube-apiserver,kube-controller-manager,kube-scheduler,kubelet,kube-proxy,kubectl} \
  "$ETCD_BIN/etcd" "$REGISTRY_BIN" /usr/bin/containerd /usr/sbin/runc /usr/lib/cni/bridge /usr/sbin/iptables; do
  [[ -x "$b" ]] || die "$b is missing: run make cluster-deps"
done

print_kubeconfig() {
  mkdir -p "$STATE_DIR"
  cp "$KUBECONFIG_ADMIN" "$KUBECONFIG_OUT"
  ln -sfn "$LOGS" "$STATE_DIR/logs"
  echo "export KUBECONFIG=$KUBECONFIG_OUT"
}

healthy() {
  local d
  for d in "${DAEMONS[@]}"; do pid_alive "$d" || return 1; done
  [[ "$(kubectl_admin get --raw=/readyz 2>/dev/null)" == ok ]] || return 1
  kubectl_admin get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -x True >/dev/null
}

if healthy; then
  log "cluster already up and healthy"
  print_kubeconfig
  exit 0
fi

# Whatever is left of an earlier run goes first: processes, containers, mounts, network.
"$CLUSTER_HERE/down.sh" --quiet

mkdir -p "$BASE" "$RUN" "$CONF" "$LOGS" "$PIDS" "$KUBELET_ROOT" "$POD_LOGS" "$CNI_CONF_DIR" \
  "$CNI_IPAM_DIR" "$CONTAINERD_ROOT" "$CONTAINERD_STATE"
ensure_pki
write_kubeconfigs

# --- network -------------------------------------------------------------------------
setup_network() {
  sysctl -qw net.ipv4.ip_forward=1
  sysctl -qw net.bridge.bridge-nf-call-iptables=1
  sysctl -qw net.bridge.bridge-nf-call-ip6tables=1
  # The bridge exists before the kubelet starts, so the node address is there from the
  # start; the CNI bridge plugin adopts it (same name, same gateway address).
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/${POD_SUBNET#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Service IPs are routed onto the bridge: kube-proxy's DNAT sends them to pods; without
  # a rule they die on the bridge instead of leaving through the machine's uplink.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE"
  # Pods talk only to each other and to this host: never forward from the bridge to any
  # other interface.
  iptables -N LAMEDUCK-FORWARD
  iptables -A LAMEDUCK-FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -j DROP
  iptables -I FORWARD 1 -j LAMEDUCK-FORWARD
}
setup_network

# Pods get this resolv.conf (no CoreDNS runs; nothing in a pod may resolve outside names).
printf 'nameserver 127.0.0.1\noptions ndots:1\n' >"$CONF/resolv.conf"

cat >"$CNI_CONF_DIR/10-lameduck.conflist" <<EOF_CNI
{
  "cniVersion": "0.4.0",
  "name": "lameduck",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_IPAM_DIR",
        "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF_CNI

# --- daemons -------------------------------------------------------------------------
# start_daemon NAME BINARY ARGS...: detached from this session, output appended to the log,
# the PID in $PIDS/NAME.pid: down.sh stops the daemons by these files (and by their exact
# binary path, daemon_binary, should a file be lost), nothing broader.
start_daemon() {
  local name="$1"; shift
  [[ "$1" == "$(daemon_binary "$name")" ]] || die "start_daemon $name: $1 is not $(daemon_binary "$name") (lib.sh)"
  echo "=== $(date -u +%FT%TZ) starting $name" >>"$LOGS/$name.log"
  # 9>&-: the daemon must not inherit the cluster lock (lock_cluster).
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  echo $! >"$PIDS/$name.pid"
}

# check_alive NAME: fail with the log's tail if the daemon died during start-up.
check_alive() {
  pid_alive "$1" && return 0
  tail -n 30 "$LOGS/$1.log" >&2
  die "$1 exited during start-up (log: $LOGS/$1.log)"
}

log "starting etcd"
start_daemon etcd "$ETCD_BIN/etcd" \
  --name lameduck --data-dir "$ETCD_DATA" \
  --listen-client-urls "$ETCD_CLIENT_URL" --advertise-client-urls "$ETCD_CLIENT_URL" \
  --listen-peer-urls "$ETCD_PEER_URL" --initial-advertise-peer-urls "$ETCD_PEER_URL" \
  --initial-cluster "lameduck=$ETCD_PEER_URL" \
  --unsafe-no-fsync --quota-backend-bytes 2147483648 --log-level warn
wait_for 30 "etcd health" curl -fsS "$ETCD_CLIENT_URL/health" || { check_alive etcd; die "etcd not healthy"; }

log "starting kube-apiserver"
start_daemon kube-apiserver "$K8S_BIN/kube-apiserver" \
  --etcd-servers "$ETCD_CLIENT_URL" \
  --advertise-address "$NODE_IP" --bind-address 0.0.0.0 --secure-port "$APISERVER_PORT" \
  --service-cluster-ip-range "$SERVICE_CIDR" --service-node-port-range 30000-32767 \
  --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
  --client-ca-file "$PKI/ca.crt" \
  --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority "$PKI/ca.crt" \
  --kubelet-preferred-address-types InternalIP \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
  --api-audiences https://kubernetes.default.svc.cluster.local \
  --authorization-mode Node,RBAC \
  --enable-admission-plugins NodeRestriction \
  --allow-privileged=true --anonymous-auth=false \
  --profiling=false --v=1
wait_for 90 "kube-apiserver /readyz" bash -c "[[ \$('$K8S_BIN/kubectl' --kubeconfig '$KUBECONFIG_ADMIN' get --raw=/readyz 2>/dev/null) == ok ]]" \
  || { check_alive kube-apiserver; die "kube-apiserver not ready"; }

log "starting kube-controller-manager and kube-scheduler"
start_daemon kube-controller-manager "$K8S_BIN/kube-controller-manager" \
  --kubeconfig "$CONF/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$CONF/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$CONF/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
  --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" \
  --allocate-node-cidrs=true --cluster-cidr "$CLUSTER_CIDR" --node-cidr-mask-size 24 \
  --profiling=false --v=1
start_daemon kube-scheduler "$K8S_BIN/kube-scheduler" \
  --kubeconfig "$CONF/scheduler.kubeconfig" \
  --authentication-kubeconfig "$CONF/scheduler.kubeconfig" \
  --authorization-kubeconfig "$CONF/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --leader-elect=false --profiling=false --v=1

log "starting the registry on $REGISTRY"
mkdir -p "$REGISTRY_DATA"
cat >"$CONF/registry.yml" <<EOF_REG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_DATA
  delete:
    enabled: true
http:
  addr: $REGISTRY_LISTEN
EOF_REG
start_daemon registry "$REGISTRY_BIN" serve "$CONF/registry.yml"
wait_for 30 "registry" curl -fsS "http://$REGISTRY_LISTEN/v2/" || { check_alive registry; die "registry not answering"; }
# containerd pulls from it over plain HTTP (and only from it: every other host keeps TLS).
mkdir -p "$CONF/certs.d/$REGISTRY"
cat >"$CONF/certs.d/$REGISTRY/hosts.toml" <<EOF_HOSTS
server = "http://$REGISTRY"

[host."http://$REGISTRY_LISTEN"]
  capabilities = ["pull", "resolve"]
EOF_HOSTS

log "starting containerd"
cat >"$CONF/containerd.toml" <<EOF_CTR
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$BASE/containerd-opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = false
  # This machine's root lacks CAP_SYS_RESOURCE: it cannot lower oom_score_adj (runc would
  # fail every sandbox with "can't get final child's PID from pipe: EOF"). Clamp the
  # kubelet's values to containerd's own instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CONF/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CNI_CONF_DIR"
    max_conf_num = 1
EOF_CTR
start_daemon containerd /usr/bin/containerd --config "$CONF/containerd.toml"
wait_for 30 "containerd socket" ctr --address "$CONTAINERD_SOCK" version || { check_alive containerd; die "containerd not answering"; }
"$CLUSTER_HERE/images.sh" --if-missing

# The kubelet puts pods under this cgroup (cgroup v1, every controller); it must exist.
for ctl in /sys/fs/cgroup/*/; do
  [[ "$ctl" == */unified/ ]] && continue
  mkdir -p "$ctl$CGROUP_ROOT"
done
if [[ -d /sys/fs/cgroup/cpuset/$CGROUP_ROOT ]]; then
  cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROUP_ROOT/cpuset.mems"
fi

log "starting kubelet and kube-proxy"
cat >"$CONF/kubelet.yaml" <<EOF_KUBELET
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$PKI/kubelet-server.crt"
tlsPrivateKeyFile: "$PKI/kubelet-server.key"
address: "$NODE_IP"
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: "unix://$CONTAINERD_SOCK"
cgroupDriver: cgroupfs
cgroupRoot: "/$CGROUP_ROOT"
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
memorySwap: {swapBehavior: NoSwap}
resolvConf: "$CONF/resolv.conf"
podLogsDir: "$POD_LOGS"
clusterDomain: cluster.local
# Images are imported locally and never pulled: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
registerNode: true
rotateCertificates: false
serverTLSBootstrap: false
maxPods: 110
EOF_KUBELET
# containerd's CRI plugin answers "server is not initialized yet" until it has recovered its
# state (longer with the containers of an earlier run on disk), and the kubelet exits on
# that at once. It is started again until it stays up.
for attempt in 1 2 3 4 5; do
  start_daemon kubelet "$K8S_BIN/kubelet" \
    --config "$CONF/kubelet.yaml" --kubeconfig "$CONF/kubelet.kubeconfig" \
    --root-dir "$KUBELET_ROOT" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1
  sleep 2
  pid_alive kubelet && break
  log "kubelet exited during start-up (attempt $attempt of 5): $(grep -o 'err="[^"]*' "$LOGS/kubelet.log" | tail -n 1 | cut -c1-160)"
done
check_alive kubelet

cat >"$CONF/kube-proxy.yaml" <<EOF_PROXY
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
hostnameOverride: "$NODE_NAME"
clusterCIDR: "$CLUSTER_CIDR"
clientConnection: {kubeconfig: "$CONF/kube-proxy.kubeconfig"}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["primary"]
# Leave the machine's conntrack sysctls as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {syncPeriod: 5s, minSyncPeriod: 0s}
EOF_PROXY
start_daemon kube-proxy "$K8S_BIN/kube-proxy" --config "$CONF/kube-proxy.yaml" --v=1

log "waiting for node $NODE_NAME to be Ready"
if ! wait_for 120 "node Ready" bash -c "'$K8S_BIN/kubectl' --kubeconfig '$KUBECONFIG_ADMIN' get node '$NODE_NAME' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -x True"; then
  for d in "${DAEMONS[@]}"; do check_alive "$d"; done
  tail -n 30 "$LOGS/kubelet.log" >&2
  die "node $NODE_NAME did not become Ready"
fi
# Pods need the default service account (made by the controller-manager).
wait_for 60 "default service account" kubectl_admin -n default get serviceaccount default \
  || die "no default service account"
log "cluster up in $((SECONDS - start))s (logs: $LOGS)"
print_kubeconfig
