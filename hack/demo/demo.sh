#!/usr/bin/env bash
# make demo — the main job. On a fresh machine: bring up (or reuse) the local cluster, build
# and import the images, `helm upgrade --install` lameduck, deploy three variants of the same
# service into namespace lameduck-demo, restart each under the same constant load, and print
# one side-by-side table (also written as Markdown, JSON and a PNG plot under out/demo/).
#
#   go-naive   the usual Go service: signal.Notify → os.Exit, no lameduck
#   go-web     the same service with the Go SDK, Deployment annotated lameduck.dev/inject
#   rust-web   the Rust example with the Rust SDK, annotated
#
# Knobs (environment): DEMO_RATE (req/s per variant, default 50), DEMO_CLEANUP_MILLIS
# (default 2000), DEMO_GRACE (the Deployments' terminationGracePeriodSeconds, default 30).
# The cluster is left up; `make cluster-down` removes it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

NS=lameduck-demo
RELEASE=lameduck
SYSTEM_NS=lameduck-system
OUT=$ROOT/out/demo
RECORDS_ROOT=/var/lib/lameduck-demo
RATE=${DEMO_RATE:-50}
CLEANUP_MILLIS=${DEMO_CLEANUP_MILLIS:-2000}
GRACE=${DEMO_GRACE:-30}
REPLICAS=3
VARIANTS=(go-naive go-web rust-web)
MAKE=${MAKE:-make}
CACHE_DIR=${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lameduck}
VEGETA=${VEGETA:-$CACHE_DIR/bin/vegeta}
STARTED=$SECONDS
PHASES=9
PHASE=0

image_of() {
	case $1 in
	go-naive) echo lameduck/example-go-naive:dev ;;
	go-web) echo lameduck/example-go-web:dev ;;
	rust-web) echo lameduck/example-rust-web:dev ;;
	esac
}
injected() { [[ $1 != go-naive ]]; }

bold=$'\033[1m' dim=$'\033[2m' reset=$'\033[0m'
[[ -t 1 ]] || bold='' dim='' reset=''
phase() {
	PHASE=$((PHASE + 1))
	printf '\n%s==> [%d/%d] %s%s %s(%ds)%s\n' "$bold" "$PHASE" "$PHASES" "$*" "$reset" "$dim" $((SECONDS - STARTED)) "$reset"
}
info() { printf '    %s\n' "$*"; }
die() {
	printf '\ndemo: %s\n' "$*" >&2
	exit 1
}

# wait_until DESCRIPTION TIMEOUT_S COMMAND... — polls COMMAND every second with a counter;
# COMMAND's stdout (one short line) is shown next to the counter.
wait_until() {
	local what=$1 timeout=$2 start=$SECONDS note=''
	shift 2
	while true; do
		if note=$("$@" 2>/dev/null); then
			printf '\r\033[K    %s: done in %ds %s\n' "$what" $((SECONDS - start)) "$note"
			return 0
		fi
		if ((SECONDS - start >= timeout)); then
			printf '\r\033[K    %s: timed out after %ds %s\n' "$what" "$timeout" "$note"
			return 1
		fi
		printf '\r\033[K    %s … %ds %s' "$what" $((SECONDS - start)) "$note"
		sleep 1
	done
}

BG_PIDS=()
cleanup_bg() {
	local p
	for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup_bg EXIT

# ---------------------------------------------------------------------------------------
phase "local cluster (make cluster-up; reused when already up)"
$MAKE --no-print-directory cluster-up
eval "$(e2e/cluster/env.sh)"
export KUBECONFIG
kubectl get node -o wide | sed 's/^/    /'

phase "images and load tool (make images vegeta)"
$MAKE --no-print-directory images vegeta
[[ -x $VEGETA ]] || die "vegeta not found at $VEGETA"

phase "plot library (matplotlib)"
if python3 -c 'import matplotlib' 2>/dev/null; then
	info "matplotlib $(python3 -c 'import matplotlib; print(matplotlib.__version__)') already installed"
else
	python3 -m pip install --quiet matplotlib 2>&1 | grep -v 'Running pip as the' || true
	python3 -c 'import matplotlib' || die "pip install matplotlib failed"
	info "matplotlib installed"
fi

# ---------------------------------------------------------------------------------------
phase "helm upgrade --install lameduck (the e2e suite's values)"
hack/install-local.sh || die "helm install of charts/lameduck failed"

# ---------------------------------------------------------------------------------------
phase "deploy ${VARIANTS[*]} into namespace $NS ($REPLICAS replicas each)"
if kubectl get namespace "$NS" >/dev/null 2>&1; then
	kubectl delete namespace "$NS" --wait=false >/dev/null
	ns_gone() { ! kubectl get namespace "$NS" >/dev/null 2>&1; }
	wait_until "deleting the previous run's namespace" 300 ns_gone || die "namespace $NS stuck"
fi
rm -rf "$OUT" "${RECORDS_ROOT:?}"
mkdir -p "$OUT"
kubectl create namespace "$NS" >/dev/null

manifests() {
	local v=$1 annotations='{}'
	if injected "$v"; then
		annotations='{"lameduck.dev/inject": "true"}'
		# minSamples 3: one rolling restart of 3 replicas gives a recommendation.
		cat <<EOF
{"apiVersion": "lameduck.dev/v1alpha1", "kind": "ShutdownPolicy",
 "metadata": {"name": "deployment-$v", "namespace": "$NS"},
 "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "$v"},
          "updateMode": "Initial", "gracePeriod": {"minSamples": 3}}}
EOF
	fi
	cat <<EOF
{"apiVersion": "apps/v1", "kind": "Deployment",
 "metadata": {"name": "$v", "namespace": "$NS", "annotations": $annotations},
 "spec": {
   "replicas": $REPLICAS,
   "selector": {"matchLabels": {"app": "$v"}},
   "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
   "template": {
     "metadata": {"labels": {"app": "$v", "lameduck-demo/variant": "$v"}},
     "spec": {
       "terminationGracePeriodSeconds": $GRACE,
       "initContainers": [{
         "name": "records-dir", "image": "lameduck/example-rust-web:dev", "imagePullPolicy": "Never",
         "args": ["prepare-records-dir"], "env": [{"name": "RECORDS_DIR", "value": "/records"}],
         "securityContext": {"runAsUser": 0, "runAsNonRoot": false},
         "volumeMounts": [{"name": "records", "mountPath": "/records"}]}],
       "containers": [{
         "name": "web", "image": "$(image_of "$v")", "imagePullPolicy": "Never",
         "ports": [{"containerPort": 8080}],
         "env": [{"name": "RECORDS_DIR", "value": "/records"},
                 {"name": "REQUEST_MILLIS", "value": "20"},
                 {"name": "CLEANUP_MILLIS", "value": "$CLEANUP_MILLIS"}],
         "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
         "volumeMounts": [{"name": "records", "mountPath": "/records"}]}],
       "volumes": [{"name": "records",
                    "hostPath": {"path": "$RECORDS_ROOT/$v", "type": "DirectoryOrCreate"}}]}}}}
{"apiVersion": "v1", "kind": "Service",
 "metadata": {"name": "$v", "namespace": "$NS"},
 "spec": {"selector": {"app": "$v"}, "ports": [{"port": 80, "targetPort": 8080}]}}
EOF
}
for v in "${VARIANTS[@]}"; do manifests "$v"; done | kubectl apply -f - | sed 's/^/    /'

declare -A IP
rolled_out() { # NAME: the Deployment's pods all updated, ready, and no old pod left
	local s
	s=$(kubectl get deployment -n "$NS" "$1" -o jsonpath='{.metadata.generation} {.status.observedGeneration} {.status.updatedReplicas} {.status.readyReplicas} {.status.availableReplicas} {.status.replicas}')
	read -r gen obs upd rdy avl tot <<<"$s"
	echo "(updated ${upd:-0}/$REPLICAS, ready ${rdy:-0})"
	[[ $gen == "$obs" && ${upd:-0} == "$REPLICAS" && ${rdy:-0} == "$REPLICAS" && ${avl:-0} == "$REPLICAS" && ${tot:-0} == "$REPLICAS" ]]
}
pod_count() { kubectl get pods -n "$NS" -l "app=$1" --no-headers 2>/dev/null | wc -l; }
pods_exactly() { # NAME N: exactly N pods (terminating ones included)
	local n
	n=$(pod_count "$1")
	echo "($n pods)"
	[[ $n == "$2" ]]
}
answers() { curl -fsS --max-time 2 "http://$1/healthz" >/dev/null; }
for v in "${VARIANTS[@]}"; do
	wait_until "$v ready" 240 rolled_out "$v" || die "$v did not become ready"
	IP[$v]=$(kubectl get service -n "$NS" "$v" -o jsonpath='{.spec.clusterIP}')
	[[ ${IP[$v]} == 10.96.* ]] || die "ClusterIP ${IP[$v]} of $v is outside the cluster's Service range"
	wait_until "$v Service at ${IP[$v]}:80 answering" 60 answers "${IP[$v]}" || die "Service $v does not answer"
done
for v in "${VARIANTS[@]}"; do
	injected "$v" || continue
	n=$(kubectl get pods -n "$NS" -l "app=$v" -o jsonpath='{range .items[*]}{.spec.initContainers[*].name}{"\n"}{end}' | grep -cw lameduck || true)
	info "$v: $n/$REPLICAS pods carry the lameduck sidecar"
	((n == REPLICAS)) || die "pods of $v were created without the sidecar: was the $RELEASE release uninstalled meanwhile (helm list -A)?"
done

# Every pod update of the namespace, for SIGKILLs (exit 137) and per-pod shutdown durations.
kubectl get pods -n "$NS" --watch --output-watch-events -o json >"$OUT/pods.watch.json" 2>/dev/null &
BG_PIDS+=($!)

# ---------------------------------------------------------------------------------------
phase "rolling restarts under load ($RATE req/s per variant through its ClusterIP, one variant at a time)"
TIMINGS="$OUT/timings.tsv"
printf 'variant\tready_s\tgone_s\tload_s\n' >"$TIMINGS"
for v in "${VARIANTS[@]}"; do
	ip=${IP[$v]}
	info "${bold}$v${reset}: vegeta attack -rate=$RATE/s → http://$ip/"
	echo "GET http://$ip/" | "$VEGETA" attack -rate="$RATE/s" -duration=600s -timeout=5s \
		-output "$OUT/$v.vegeta.bin" &
	load_pid=$!
	BG_PIDS+=($load_pid)
	load_start=$SECONDS
	sleep 3
	t0=$(date +%s.%N)
	kubectl rollout restart -n "$NS" "deployment/$v" | sed 's/^/    /'
	wait_until "$v rollout (new pods ready)" 300 rolled_out "$v" || die "rollout of $v did not finish"
	t_ready=$(date +%s.%N)
	wait_until "$v old pods gone" 300 pods_exactly "$v" "$REPLICAS" || die "old pods of $v did not go away"
	t_gone=$(date +%s.%N)
	sleep 3
	kill -INT "$load_pid"
	wait "$load_pid" || true
	"$VEGETA" report -type=json "$OUT/$v.vegeta.bin" >"$OUT/$v.vegeta.json"
	awk -v v="$v" -v a="$t0" -v b="$t_ready" -v c="$t_gone" -v l=$((SECONDS - load_start)) \
		'BEGIN { printf "%s\t%.1f\t%.1f\t%d\n", v, b - a, c - a, l }' >>"$TIMINGS"
	python3 - "$OUT/$v.vegeta.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
codes = r.get("status_codes") or {}
ok = codes.get("200", 0)
print(f"    load: {r['requests']} requests, {ok} ok, {r['requests'] - ok} failed, codes {codes}")
for e in (r.get("errors") or [])[:3]:
    print(f"      error: {e}")
EOF
done

# ---------------------------------------------------------------------------------------
phase "flush the records of the new pods (scale to 0: their cleanup writes them)"
for v in "${VARIANTS[@]}"; do kubectl scale -n "$NS" "deployment/$v" --replicas=0 >/dev/null; done
for v in "${VARIANTS[@]}"; do
	wait_until "$v pods gone" 180 pods_exactly "$v" 0 || die "pods of $v did not go away"
done

phase "read the ShutdownPolicies (2 × $REPLICAS shutdowns per injected variant)"
samples_at_least() {
	local s
	s=$(kubectl get sdp -n "$NS" "deployment-$1" -o jsonpath='{.status.samples}')
	echo "(${s:-0} samples)"
	((${s:-0} >= $2))
}
for v in "${VARIANTS[@]}"; do
	injected "$v" || continue
	wait_until "deployment-$v observations" 90 samples_at_least "$v" $((2 * REPLICAS)) ||
		info "(reporting what the policy has)"
done
sleep 2 # let the watch write the last events
kubectl get sdp -n "$NS" -o json >"$OUT/sdp.json"
for v in "${VARIANTS[@]}"; do
	n=0
	for f in "$RECORDS_ROOT/$v"/*.records; do
		[[ -e $f ]] && n=$((n + $(grep -c . "$f" || true)))
	done
	printf '%s\t%d\n' "$v" "$n"
done >"$OUT/records.tsv"

# New pods get the tuned grace period (updateMode Initial) at admission.
for v in "${VARIANTS[@]}"; do kubectl scale -n "$NS" "deployment/$v" --replicas="$REPLICAS" >/dev/null; done
for v in "${VARIANTS[@]}"; do
	wait_until "$v scaled back to $REPLICAS" 180 rolled_out "$v" || true
done
kubectl get pods -n "$NS" -o json >"$OUT/pods.after.json"

# ---------------------------------------------------------------------------------------
phase "results"
cleanup_bg
BG_PIDS=()
python3 hack/demo/report.py --out "$OUT" --rate "$RATE" --cleanup-millis "$CLEANUP_MILLIS" \
	--grace "$GRACE" --variants "${VARIANTS[@]}"

cat <<EOF

${bold}Done in $((SECONDS - STARTED))s.${reset} The cluster is still up, with the three variants running:

  export KUBECONFIG=$KUBECONFIG
  export PATH=$(dirname "$(command -v kubectl)"):\$PATH   # the pinned kubectl and helm
  kubectl get sdp -n $NS
  kubectl describe sdp -n $NS deployment-go-web
  kubectl get pods -n $NS -o custom-columns=NAME:.metadata.name,GRACE:.spec.terminationGracePeriodSeconds
  kubectl rollout restart -n $NS deployment/rust-web   # more observations
  make cluster-down                                    # remove the cluster

Results: out/demo/table.md, out/demo/table.json, out/demo/shutdown-durations.png
EOF
