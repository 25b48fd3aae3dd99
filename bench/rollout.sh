#!/usr/bin/env bash
# make bench-rollout — lameduck against what users do instead, side by side, in one run on
# the local cluster: the same service under the same load, each variant restarted again
# and again while the load runs, until each has had BENCH_REQUESTS requests sent while its
# pods were terminating.
#
#   none           examples/go-naive, no preStop
#   sleep-5        examples/go-naive, lifecycle.preStop.sleep.seconds: 5
#   sleep-15       examples/go-naive, lifecycle.preStop.sleep.seconds: 15
#   lameduck       examples/go-naive, annotation lameduck.dev/inject only (no SDK)
#   lameduck-sdk   examples/go-web (the same service with the Go SDK), annotated
#
# Each variant: 3 replicas, grace period 30 s, RollingUpdate maxSurge 1 / maxUnavailable 0,
# a readiness probe every second on the serving port, its own load generator pod
# (e2e/loadgen, keep-alive) at BENCH_RATE req/s to its ClusterIP for the whole run. All
# variants run at the same time, so they share the machine's load. A variant's disruption
# window is `rollout restart` → last old pod gone; restarts go on (BENCH_SETTLE s apart)
# until BENCH_RATE × (sum of its windows) ≥ BENCH_REQUESTS and it had BENCH_MIN_ROLLOUTS.
# The figures count the requests actually sent inside the windows (the load generator's
# per-second counts). Output: a table on the terminal, out/bench-rollout/{table.md,
# table.json, tradeoff.png} and the raw material (hack/demo/rollout_report.py).
#
# Knobs: BENCH_RATE (req/s per variant, 300), BENCH_REQUESTS (100000),
# BENCH_MIN_ROLLOUTS (5), BENCH_MAX_ROLLOUTS (60), BENCH_SETTLE (3),
# BENCH_CLEANUP_MILLIS (500), BENCH_VARIANTS (all five), BENCH_OUT (out/bench-rollout).
# BENCH_SMOKE=1: one rollout per variant at 40 req/s (the check make test runs).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SCRIPT_NAME=bench-rollout
NS=lameduck-bench
STATE_DIR=${STATE_DIR:-$ROOT/.state}
REPLICAS=3
GRACE=30
RATE=${BENCH_RATE:-300}
TARGET=${BENCH_REQUESTS:-100000}
MIN_ROLLOUTS=${BENCH_MIN_ROLLOUTS:-5}
MAX_ROLLOUTS=${BENCH_MAX_ROLLOUTS:-60}
SETTLE=${BENCH_SETTLE:-3}
CLEANUP_MILLIS=${BENCH_CLEANUP_MILLIS:-500}
OUT=${BENCH_OUT:-$ROOT/out/bench-rollout}
read -r -a VARIANTS <<<"${BENCH_VARIANTS:-none sleep-5 sleep-15 lameduck lameduck-sdk}"
if [[ ${BENCH_SMOKE:-0} == 1 ]]; then
	RATE=${BENCH_RATE:-40}
	TARGET=0
	MIN_ROLLOUTS=1
	MAX_ROLLOUTS=1
fi
RECORDS_DIR=/var/lib/lameduck-bench/$(date -u +%Y%m%d-%H%M%S)
PHASES=7
# shellcheck source=../hack/demo/lib.sh
source "$ROOT/hack/demo/lib.sh"

phase "local cluster, images, lameduck (make images, hack/install-local.sh)"
eval "$(e2e/cluster/env.sh)"
export KUBECONFIG
kubectl get --raw /readyz >/dev/null || die "the local cluster is not up: make cluster-up"
for var in EXAMPLE_GO_NAIVE EXAMPLE_GO_WEB EXAMPLE_RUST_WEB LOADGEN; do
	[[ -n $(published_image $var) ]] || die "no $var in $STATE_DIR/examples.env: make images"
done
hack/install-local.sh >/dev/null || die "helm install of lameduck failed"
info "lameduck installed from the local registry"

phase "deploy ${VARIANTS[*]} into $NS ($REPLICAS replicas each)"
if kubectl get namespace "$NS" >/dev/null 2>&1; then
	kubectl delete namespace "$NS" --wait=false >/dev/null
	ns_gone() { ! kubectl get namespace "$NS" >/dev/null 2>&1; }
	wait_until "deleting the previous run's namespace" 300 ns_gone || die "namespace $NS stuck"
fi
rm -rf "$OUT"
mkdir -p "$OUT"
kubectl create namespace "$NS" >/dev/null

manifest() {
	local v=$1 image=EXAMPLE_GO_NAIVE annotations='{}' lifecycle=''
	case $v in
	sleep-5) lifecycle='"lifecycle": {"preStop": {"sleep": {"seconds": 5}}},' ;;
	sleep-15) lifecycle='"lifecycle": {"preStop": {"sleep": {"seconds": 15}}},' ;;
	lameduck) annotations='{"lameduck.dev/inject": "true"}' ;;
	lameduck-sdk) annotations='{"lameduck.dev/inject": "true"}' image=EXAMPLE_GO_WEB ;;
	none) ;;
	*) die "unknown variant $v" ;;
	esac
	cat <<EOF
{"apiVersion": "apps/v1", "kind": "Deployment",
 "metadata": {"name": "$v", "namespace": "$NS", "annotations": $annotations},
 "spec": {
   "replicas": $REPLICAS,
   "selector": {"matchLabels": {"app": "$v"}},
   "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
   "template": {
     "metadata": {"labels": {"app": "$v"}},
     "spec": {
       "terminationGracePeriodSeconds": $GRACE,
       "initContainers": [{
         "name": "records-dir", "image": "$(published_image EXAMPLE_RUST_WEB)",
         "args": ["prepare-records-dir"], "env": [{"name": "RECORDS_DIR", "value": "/records"}],
         "securityContext": {"runAsUser": 0, "runAsNonRoot": false},
         "volumeMounts": [{"name": "records", "mountPath": "/records"}]}],
       "containers": [{
         "name": "web", "image": "$(published_image $image)",
         "ports": [{"containerPort": 8080}],
         $lifecycle
         "env": [{"name": "RECORDS_DIR", "value": "/records"},
                 {"name": "REQUEST_MILLIS", "value": "20"},
                 {"name": "CLEANUP_MILLIS", "value": "$CLEANUP_MILLIS"}],
         "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
         "volumeMounts": [{"name": "records", "mountPath": "/records"}]}],
       "volumes": [{"name": "records",
                    "hostPath": {"path": "$RECORDS_DIR/$v", "type": "DirectoryOrCreate"}}]}}}}
{"apiVersion": "v1", "kind": "Service",
 "metadata": {"name": "$v", "namespace": "$NS"},
 "spec": {"selector": {"app": "$v"}, "ports": [{"port": 80, "targetPort": 8080}]}}
EOF
}
for v in "${VARIANTS[@]}"; do manifest "$v"; done | kubectl apply -f - | sed 's/^/    /'
declare -A IP
for v in "${VARIANTS[@]}"; do
	wait_until "$v ready" 240 rolled_out "$v" || die "$v did not become ready"
	IP[$v]=$(kubectl get service -n "$NS" "$v" -o jsonpath='{.spec.clusterIP}')
done
kubectl get pods -n "$NS" --watch --output-watch-events -o json >"$OUT/pods.watch.json" 2>/dev/null &
BG_PIDS+=($!)

phase "load: $RATE req/s per variant from its own pod"
for v in "${VARIANTS[@]}"; do
	start_load "load-$v" "http://${IP[$v]}/" "$RATE"
done
sleep "$SETTLE"

phase "rolling restarts, all variants at once (≥ $MIN_ROLLOUTS each, until $TARGET requests in their windows)"
# rollouts VARIANT: restarts it until its windows hold TARGET requests (at RATE); one line
# per rollout in $OUT/windows-VARIANT.tsv: index, restart, new pods ready, last old pod gone.
rollouts() {
	local v=$1 i=0 sum=0 t0 t_ready t_gone
	while ((i < MAX_ROLLOUTS)); do
		if ((i >= MIN_ROLLOUTS)) && awk -v s="$sum" -v r="$RATE" -v t="$TARGET" 'BEGIN { exit !(s * r >= t) }'; then
			break
		fi
		i=$((i + 1))
		t0=$(date +%s.%N)
		kubectl rollout restart -n "$NS" "deployment/$v" >/dev/null
		local deadline=$((SECONDS + 300))
		until rolled_out "$v" >/dev/null 2>&1; do
			((SECONDS < deadline)) || die "$v: rollout $i not done after 300 s"
			sleep 0.5
		done
		t_ready=$(date +%s.%N)
		until [[ $(pod_count "$v") == "$REPLICAS" ]]; do
			((SECONDS < deadline)) || die "$v: old pods of rollout $i still there after 300 s"
			sleep 0.5
		done
		t_gone=$(date +%s.%N)
		printf '%d\t%s\t%s\t%s\n' "$i" "$t0" "$t_ready" "$t_gone" >>"$OUT/windows-$v.tsv"
		sum=$(awk -v s="$sum" -v a="$t0" -v c="$t_gone" 'BEGIN { print s + c - a }')
		printf '    %-13s rollout %2d: %5.1f s (windows %6.1f s)\n' "$v" "$i" \
			"$(awk -v a="$t0" -v c="$t_gone" 'BEGIN { print c - a }')" "$sum"
		sleep "$SETTLE"
	done
}
pids=()
for v in "${VARIANTS[@]}"; do
	rollouts "$v" &
	pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || die "a rollout loop failed"; done

phase "stop the load, flush the records (scale to 0), count them on the nodes"
for v in "${VARIANTS[@]}"; do stop_load "load-$v" "$OUT/$v.load.json"; done
for v in "${VARIANTS[@]}"; do kubectl scale -n "$NS" "deployment/$v" --replicas=0 >/dev/null; done
for v in "${VARIANTS[@]}"; do
	wait_until "$v pods gone" 180 pods_exactly "$v" 0 || die "pods of $v did not go away"
done
node=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
kubectl apply -f - >/dev/null <<EOF
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "count-records", "namespace": "$NS"},
 "spec": {"restartPolicy": "Never", "nodeName": "$node",
          "containers": [{"name": "count", "image": "$(published_image EXAMPLE_RUST_WEB)",
                          "args": ["count-records"], "env": [{"name": "RECORDS_DIR", "value": "/records"}],
                          "volumeMounts": [{"name": "records", "mountPath": "/records", "readOnly": true}]}],
          "volumes": [{"name": "records", "hostPath": {"path": "$RECORDS_DIR", "type": "Directory"}}]}}
EOF
wait_until "records counted" 120 pod_phase count-records Succeeded || die "counting the records failed"
kubectl logs -n "$NS" count-records >"$OUT/records.counts"

phase "the ShutdownPolicies"
sleep 5 # the last observations
kubectl get sdp -n "$NS" -o json >"$OUT/sdp.json"
cleanup_bg

phase "results"
python3 hack/demo/rollout_report.py --out "$OUT" --rate "$RATE" --target "$TARGET" \
	--grace "$GRACE" --cleanup-millis "$CLEANUP_MILLIS" --variants "${VARIANTS[@]}"
kubectl delete namespace "$NS" --wait=false >/dev/null
info "done in $((SECONDS - STARTED)) s; namespace $NS deleted"
