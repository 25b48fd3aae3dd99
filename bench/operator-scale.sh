#!/usr/bin/env bash
# Operator memory at scale: RSS of both operator replicas (leader and follower) before and
# after 5,000 injected pods across 500 adopted Deployments on the local cluster.
#
# Usage: bench/operator-scale.sh            (make bench-operator-scale)
#   needs make cluster-up and the lameduck release in lameduck-system (hack/install-local.sh).
#   Environment: WORKLOADS (500), REPLICAS (10), NAMESPACES (5: scale-1 … scale-N),
#   SETTLE_SECONDS (30), TIMEOUT_SECONDS (1800).
#
# The Deployments are annotated lameduck.dev/inject=true; their pods carry the scheduling
# gate lameduck.dev/bench, so they stay Pending and never run (one node could not run them).
# The real controller-manager creates the pods (client QPS ≈ 20, so this takes minutes), the
# real webhook injects them, the operator adopts every Deployment (one ShutdownPolicy each).
# Once all pods and policies exist and SETTLE_SECONDS passed, VmRSS/VmHWM of the operator
# processes are read from /proc (the cluster's containers run on this host), leader and
# follower told apart by the Lease lameduck-operator. The namespaces are deleted at the end,
# also on failure, and the RSS is read once more after the deletion.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
eval "$(e2e/cluster/env.sh)"
export KUBECONFIG

WORKLOADS=${WORKLOADS:-500}
REPLICAS=${REPLICAS:-10}
NAMESPACES=${NAMESPACES:-5}
SETTLE_SECONDS=${SETTLE_SECONDS:-30}
TIMEOUT_SECONDS=${TIMEOUT_SECONDS:-1800}
SYSTEM_NS=lameduck-system
LEASE=lameduck-operator
ADMIN_PORT=8080
# Never pulled (the pods stay gated), but a real reference: the Rust example as published.
IMAGE=$(sed -n 's/^EXAMPLE_RUST_WEB=//p' .state/examples.env 2>/dev/null)
IMAGE=${IMAGE:-localhost:5000/lameduck/example-rust-web:0.1.0}

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() {
	echo "bench-operator-scale: $*" >&2
	exit 1
}

[[ -r /proc/1/environ ]] || die "needs to read /proc/<pid>/environ of the cluster's processes (run as root)"
helm status lameduck -n "$SYSTEM_NS" >/dev/null 2>&1 || die "no lameduck release in $SYSTEM_NS (hack/install-local.sh)"

namespaces=()
for i in $(seq "$NAMESPACES"); do namespaces+=("scale-$i"); done

cleanup_done=0
cleanup() {
	((cleanup_done)) && return 0
	cleanup_done=1
	log "deleting namespaces ${namespaces[*]}"
	kubectl delete ns "${namespaces[@]}" --ignore-not-found --wait=false >/dev/null 2>&1 || true
	local start=$SECONDS
	local left
	while :; do
		left=$(kubectl get ns "${namespaces[@]}" --ignore-not-found -o name 2>&1) || true
		[[ -z $left ]] && break
		((SECONDS - start < 900)) || {
			echo "bench-operator-scale: namespaces still there after 15 min: $left" >&2
			return 1
		}
		sleep 5
	done
	log "namespaces deleted in $((SECONDS - start)) s"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Number of objects behind a collection URL, without transferring them: a list with limit=1
# tells how many items remain (not with a label selector: the API server then leaves
# remainingItemCount unset).
count() {
	local json
	json=$(kubectl get --raw "$1?limit=1")
	jq '(.items | length) + (.metadata.remainingItemCount // 0)' <<<"$json"
}
count_all() { # PATH_PREFIX RESOURCE
	local total=0 n ns
	for ns in "${namespaces[@]}"; do
		n=$(count "$1/namespaces/$ns/$2")
		total=$((total + n))
	done
	echo "$total"
}
count_injected() {
	local ns
	for ns in "${namespaces[@]}"; do
		kubectl get pods -n "$ns" -l lameduck.dev/injected=true -o name --chunk-size=1000
	done | wc -l
}

# pod name → "VmRSS VmHWM" in KiB, for every operator process on this host
declare -A rss hwm pids
read_rss() {
	rss=() hwm=() pids=()
	local pid host
	for pid in $(pgrep -f lameduck-operator || true); do
		[[ -r /proc/$pid/environ ]] || continue
		host=$(tr '\0' '\n' </proc/"$pid"/environ 2>/dev/null | sed -n 's/^HOSTNAME=//p' | head -1)
		[[ -n $host ]] || continue
		kubectl get pod -n "$SYSTEM_NS" "$host" >/dev/null 2>&1 || continue
		pids[$host]=$pid
		rss[$host]=$(awk '/^VmRSS:/ {print $2}' /proc/"$pid"/status)
		hwm[$host]=$(awk '/^VmHWM:/ {print $2}' /proc/"$pid"/status)
	done
	((${#rss[@]} > 0)) || die "no lameduck-operator process of a $SYSTEM_NS pod found on this host"
}
# "leader 12.0 follower 11.5" (MiB) from the processes found by the last read_rss
rss_now() {
	local lead pod out=""
	lead=$(leader)
	for pod in "${!pids[@]}"; do
		out+="$([[ $pod == "$lead" ]] && echo leader || echo follower) $(mib "$(awk '/^VmRSS:/ {print $2}' /proc/"${pids[$pod]}"/status 2>/dev/null || echo 0)") "
	done
	echo "${out% }"
}
leader() { kubectl get lease -n "$SYSTEM_NS" "$LEASE" -o jsonpath='{.spec.holderIdentity}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

declare -A table
snapshot() { # LABEL
	read_rss
	local lead pod role
	lead=$(leader)
	for pod in "${!rss[@]}"; do
		role=follower
		[[ $pod == "$lead" ]] && role=leader
		table["$1|$role"]="$(mib "${rss[$pod]}") MiB (peak $(mib "${hwm[$pod]}") MiB) $pod"
		log "$1: $role $pod VmRSS $(mib "${rss[$pod]}") MiB, VmHWM $(mib "${hwm[$pod]}") MiB"
	done
}

metrics() { # POD
	kubectl get --raw "/api/v1/namespaces/$SYSTEM_NS/pods/$1:$ADMIN_PORT/proxy/metrics" 2>/dev/null |
		grep -E '^(lameduck_|process_)' | grep -v _bucket | head -30 || true
}

log "cluster: $(kubectl version -o json | jq -r .serverVersion.gitVersion), $(nproc) cores, operator pods: $(kubectl get pods -n "$SYSTEM_NS" -o name | tr '\n' ' ')"
snapshot baseline

start=$SECONDS
manifest=$(mktemp)
trap 'rm -f "$manifest"; cleanup' EXIT
for ns in "${namespaces[@]}"; do
	printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n---\n' "$ns"
done >"$manifest"
for i in $(seq "$WORKLOADS"); do
	ns=${namespaces[$(((i - 1) % NAMESPACES))]}
	name=$(printf 'w%04d' "$i")
	cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $name
  namespace: $ns
  annotations: {lameduck.dev/inject: "true"}
spec:
  replicas: $REPLICAS
  selector: {matchLabels: {app: $name}}
  template:
    metadata:
      labels: {app: $name}
      annotations: {lameduck.dev/inject: "true"}
    spec:
      schedulingGates: [{name: lameduck.dev/bench}]
      containers:
        - name: web
          image: $IMAGE
          imagePullPolicy: Never
---
EOF
done >>"$manifest"
log "creating $NAMESPACES namespaces and $WORKLOADS Deployments × $REPLICAS replicas"
kubectl create -f "$manifest" >/dev/null
log "created in $((SECONDS - start)) s; waiting for $((WORKLOADS * REPLICAS)) injected pods and $WORKLOADS ShutdownPolicies"

want_pods=$((WORKLOADS * REPLICAS))
while :; do
	pods=$(count_all /api/v1 pods)
	policies=$(count_all /apis/lameduck.dev/v1alpha1 shutdownpolicies)
	log "pods $pods/$want_pods, ShutdownPolicies $policies/$WORKLOADS, $((SECONDS - start)) s; RSS MiB: $(rss_now)"
	if ((pods >= want_pods && policies >= WORKLOADS)); then
		injected=$(count_injected)
		log "pods labelled lameduck.dev/injected=true: $injected/$want_pods"
		((injected >= want_pods)) && break
		die "$((pods - injected)) pods were created without injection (webhook failurePolicy Ignore)"
	fi
	((SECONDS - start < TIMEOUT_SECONDS)) || die "timed out after $TIMEOUT_SECONDS s"
	sleep 10
done
ready=$((SECONDS - start))
log "all pods injected and all workloads adopted after $ready s; settling for $SETTLE_SECONDS s"
sleep "$SETTLE_SECONDS"
snapshot "$want_pods pods"
lead=$(leader)
echo "--- operator metrics of the leader $lead (selection)"
metrics "$lead"
# Which replica served the admissions matters for its RSS (the API server's keep-alive
# connection lands on one of them): say it next to the figures.
declare -A served
for pod in "${!pids[@]}"; do
	served[$pod]=$(kubectl get --raw "/api/v1/namespaces/$SYSTEM_NS/pods/$pod:$ADMIN_PORT/proxy/metrics" 2>/dev/null |
		awk '/^lameduck_webhook_admissions_total/ {s += $2} END {print s + 0}')
	log "admissions answered by $([[ $pod == "$lead" ]] && echo leader || echo follower) $pod: ${served[$pod]}"
done

cleanup
sleep 5
snapshot "after deletion"

echo
echo "| operator RSS (VmRSS, peak = VmHWM) | leader | follower |"
echo "|---|---|---|"
for label in baseline "$want_pods pods" "after deletion"; do
	echo "| $label | ${table["$label|leader"]:-?} | ${table["$label|follower"]:-?} |"
done
echo
echo "$WORKLOADS Deployments × $REPLICAS pods in ${#namespaces[@]} namespaces: all injected and adopted after $ready s; whole run $((SECONDS - start)) s"
