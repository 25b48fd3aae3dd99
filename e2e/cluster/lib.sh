# shellcheck shell=bash
# Shared settings and helpers of the local cluster scripts (sourced, not executed).
#
# Everything the running cluster owns lives under fixed, machine-wide paths, so that a
# cluster started from one checkout can be found and cleaned up from another (CI runs in a
# fresh clone on the same machine):
#   /var/lib/lameduck-cluster/   etcd data, PKI, configs, containerd root, kubelet root,
#                                pod logs, CNI IPAM state, component logs, PID files
#   /run/lameduck-cluster/       containerd state + socket, network namespaces
# Built binaries come from the machine-wide cache ($CACHE_DIR, see build-binaries.sh).
# shellcheck disable=SC2034  # variables are used by the scripts that source this file

CLUSTER_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "$CLUSTER_HERE/versions.sh"

CACHE_DIR="${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lameduck}"
REPO_ROOT="$(cd "$CLUSTER_HERE/../.." && pwd)"
STATE_DIR="${STATE_DIR:-$REPO_ROOT/.state}"

K8S_BIN="$CACHE_DIR/k8s-$K8S_VERSION/bin"
ETCD_BIN="$CACHE_DIR/etcd-$ETCD_VERSION/bin"
HELM_BIN="$CACHE_DIR/helm-$HELM_VERSION/bin"

BASE=/var/lib/lameduck-cluster
RUN=/run/lameduck-cluster
PKI="$BASE/pki"
CONF="$BASE/config"
LOGS="$BASE/logs"
PIDS="$BASE/pids"
ETCD_DATA="$BASE/etcd"
KUBELET_ROOT="$BASE/kubelet"
POD_LOGS="$BASE/pod-logs"
CNI_CONF_DIR="$BASE/cni/net.d"
CNI_IPAM_DIR="$BASE/cni/ipam"
CONTAINERD_ROOT="$BASE/containerd"
CONTAINERD_STATE="$RUN/containerd"
CONTAINERD_SOCK="$RUN/containerd/containerd.sock"
KUBECONFIG_ADMIN="$BASE/admin.kubeconfig"
KUBECONFIG_OUT="$STATE_DIR/kubeconfig"
LOCK_FILE=/run/lameduck-cluster.lock

# Network. Everything is private to this machine: the pod subnet lives on the cni0 bridge
# that cluster-up creates, the node's address is the bridge's gateway address, and the
# service range is routed onto the bridge so that nothing addressed to it can ever leave
# through the machine's uplink (kube-proxy DNATs it to pods before it gets there).
NODE_NAME=lameduck-node
BRIDGE=cni0
NODE_IP=10.244.0.1
POD_SUBNET=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
APISERVER_PORT=6443
ETCD_CLIENT_URL=http://127.0.0.1:23790
ETCD_PEER_URL=http://127.0.0.1:23800
# cgroup (v1, cgroupfs driver) under which the kubelet puts every pod: only ours.
CGROUP_ROOT=lameduck

# The cluster's OCI registry (the CNCF distribution registry, Debian's docker-registry
# binary unpacked by cluster-deps): lameduck's images and its chart are pushed here and
# pulled from here, as from any registry. Plain HTTP on loopback only; containerd is told
# so for this one host (up.sh, hosts.toml).
REGISTRY=localhost:5000
REGISTRY_LISTEN=127.0.0.1:5000
REGISTRY_BIN="$CACHE_DIR/registry/docker-registry"
REGISTRY_DATA="$BASE/registry"

# Images every cluster needs (built by images.sh, imported by cluster-up).
PAUSE_IMAGE=docker.io/lameduck/pause:3.10
TESTAPP_IMAGE=docker.io/lameduck/testapp:dev

# The daemons in start order; cluster-down stops them in reverse.
DAEMONS=(etcd kube-apiserver kube-controller-manager kube-scheduler registry containerd kubelet kube-proxy)
# The shim containerd runs for every pod sandbox (runtime_type io.containerd.runc.v2).
SHIM_BIN=/usr/bin/containerd-shim-runc-v2
# Where containerd's shims write their PID files (shim.pid in each task's bundle).
SHIM_STATE="$CONTAINERD_STATE/io.containerd.runtime.v2.task"

# Note for these scripts: never end a pipeline with `grep -q`. With pipefail, grep -q
# exits at the first match, the writer gets SIGPIPE and the whole pipeline "fails".
# Use `grep ... >/dev/null` instead.

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] error: %s\n' "$*" >&2; exit 1; }

kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
ctr_k8s() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# daemon_binary NAME: the executable up.sh starts daemon NAME from. down.sh stops only
# processes running exactly these binaries (and the shims), so up.sh checks it starts
# nothing else.
daemon_binary() {
  case "$1" in
    etcd) echo "$ETCD_BIN/etcd" ;;
    containerd) echo /usr/bin/containerd ;;
    registry) echo "$REGISTRY_BIN" ;;
    kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy) echo "$K8S_BIN/$1" ;;
    *) return 1 ;;
  esac
}

# pid_alive NAME: the daemon's recorded PID is running.
pid_alive() {
  local f="$PIDS/$1.pid" pid
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_for() {
  local timeout="$1" what="$2"; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}

# lock_cluster: one cluster-up/cluster-down at a time on this machine (e.g. `make -j`, or
# two checkouts). The lock is inherited by the scripts this one runs (up.sh runs down.sh).
lock_cluster() {
  [[ "${LAMEDUCK_CLUSTER_LOCKED:-}" == 1 ]] && return 0
  mkdir -p "$(dirname "$LOCK_FILE")"
  exec 9>"$LOCK_FILE"
  if ! flock -w 300 9; then
    die "another cluster-up/cluster-down holds $LOCK_FILE for over 5 minutes"
  fi
  export LAMEDUCK_CLUSTER_LOCKED=1
}

require_root() { [[ $EUID -eq 0 ]] || die "the local cluster needs root (containers, mounts, iptables)"; }
