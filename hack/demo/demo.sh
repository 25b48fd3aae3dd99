#!/usr/bin/env bash
# make demo — the main job. On a fresh machine: bring up (or reuse) the local cluster, publish
# the images and the chart to its registry, `helm upgrade --install` lameduck from there,
# deploy three variants of the same service into namespace lameduck-demo, restart each
# under the same constant load, and print one side-by-side table (also written as
# Markdown, JSON and a PNG plot under out/demo/).
#
#   go-naive            the usual Go service: signal.Notify → os.Exit, no lameduck
#   go-naive-lameduck   the same image, unmodified, with the annotation only (no SDK: the
#                       sidecar's kernel view of its connections, then SIGTERM)
#   go-web              the same service with the Go SDK, Deployment annotated
#   rust-web            the Rust example with the Rust SDK, annotated
#
# Any cluster: with REGISTRY and KUBECONFIG both set, the demo publishes to REGISTRY
# (skopeo and helm credentials as for make publish) and runs on the cluster of KUBECONFIG
# instead of the local one, with the kubectl and helm on PATH (else the pinned ones, built
# once). Everything it measures is read inside the cluster: the load comes from a pod
# (e2e/loadgen), the records are counted by a pod on each node that ran the service.
#
# Knobs (environment): DEMO_RATE (req/s per variant, default 50), DEMO_CLEANUP_MILLIS
# (default 2000), DEMO_GRACE (the Deployments' terminationGracePeriodSeconds, default 30).
# The cluster is left up; `make cluster-down` removes the local one.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

NS=lameduck-demo
RELEASE=lameduck
SYSTEM_NS=lameduck-system
OUT=$ROOT/out/demo
STATE_DIR=${STATE_DIR:-$ROOT/.state}
# On the nodes, one directory per run: runs never mix, and nothing needs cleaning from
# outside the cluster.
RECORDS_ROOT=/var/lib/lameduck-demo
RUN_ID=$(date -u +%Y%m%d-%H%M%S)
RECORDS_DIR=$RECORDS_ROOT/$RUN_ID
RATE=${DEMO_RATE:-50}
CLEANUP_MILLIS=${DEMO_CLEANUP_MILLIS:-2000}
GRACE=${DEMO_GRACE:-30}
REPLICAS=3
VARIANTS=(go-naive go-naive-lameduck go-web rust-web)
MAKE=${MAKE:-make}
STARTED=$SECONDS
PHASES=9
EXTERNAL=0
[[ -n ${REGISTRY:-} ]] && EXTERNAL=1

# image_of VARIANT (or loadgen): the reference make publish-examples recorded, by digest.
image_of() {
	case $1 in
	go-naive | go-naive-lameduck) published_image EXAMPLE_GO_NAIVE ;;
	go-web) published_image EXAMPLE_GO_WEB ;;
	rust-web) published_image EXAMPLE_RUST_WEB ;;
	loadgen) published_image LOADGEN ;;
	esac
}
injected() { [[ $1 != go-naive ]]; }

SCRIPT_NAME=demo
# shellcheck source=lib.sh
source "$ROOT/hack/demo/lib.sh"

# ---------------------------------------------------------------------------------------
if ((EXTERNAL)); then
	phase "the cluster of KUBECONFIG, the registry $REGISTRY"
	[[ -n ${KUBECONFIG:-} && -f ${KUBECONFIG%%:*} ]] ||
		die "REGISTRY is set, so the demo runs on another cluster: set KUBECONFIG to its kubeconfig too (unset REGISTRY for the local cluster)"
	export KUBECONFIG
	for tool in kubectl helm; do
		if ! command -v "$tool" >/dev/null; then
			info "$tool not on PATH: using the pinned one (built once into the cache)"
			e2e/cluster/build-binaries.sh k8s helm
			eval "$(e2e/cluster/env.sh | grep '^export PATH=')"
			break
		fi
	done
	kubectl get nodes -o wide | sed 's/^/    /' || die "the cluster of $KUBECONFIG does not answer"

	phase "images and chart to $REGISTRY (make publish publish-examples)"
	$MAKE --no-print-directory publish publish-examples REGISTRY="$REGISTRY"
else
	phase "local cluster (make cluster-up; reused when already up)"
	$MAKE --no-print-directory cluster-up
	eval "$(e2e/cluster/env.sh)"
	export KUBECONFIG
	kubectl get node -o wide | sed 's/^/    /'

	phase "images and chart to the cluster's registry (make images)"
	$MAKE --no-print-directory images
fi
for v in "${VARIANTS[@]}" loadgen; do
	[[ -n $(image_of "$v") ]] || die "no image of $v in $STATE_DIR/examples.env (make publish-examples)"
done

phase "plot library (matplotlib)"
if python3 -c 'import matplotlib' 2>/dev/null; then
	info "matplotlib $(python3 -c 'import matplotlib; print(matplotlib.__version__)') already installed"
else
	python3 -m pip install --quiet matplotlib 2>&1 | grep -v 'Running pip as the' || true
	python3 -c 'import matplotlib' || die "pip install matplotlib failed"
	info "matplotlib installed"
fi

# ---------------------------------------------------------------------------------------
phase "helm upgrade --install lameduck from oci://$(sed -n 's|^CHART=oci://||p' "$STATE_DIR/published.env")"
hack/install.sh || die "helm install of lameduck failed"

# ---------------------------------------------------------------------------------------
phase "deploy ${VARIANTS[*]} into namespace $NS ($REPLICAS replicas each)"
if kubectl get namespace "$NS" >/dev/null 2>&1; then
	kubectl delete namespace "$NS" --wait=false >/dev/null
	ns_gone() { ! kubectl get namespace "$NS" >/dev/null 2>&1; }
	wait_until "deleting the previous run's namespace" 300 ns_gone || die "namespace $NS stuck"
fi
rm -rf "$OUT"
mkdir -p "$OUT"
# The local cluster's node is this machine: earlier runs' records can go.
((EXTERNAL)) || rm -rf "${RECORDS_ROOT:?}"
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
         "name": "records-dir", "image": "$(image_of rust-web)",
         "args": ["prepare-records-dir"], "env": [{"name": "RECORDS_DIR", "value": "/records"}],
         "securityContext": {"runAsUser": 0, "runAsNonRoot": false},
         "volumeMounts": [{"name": "records", "mountPath": "/records"}]}],
       "containers": [{
         "name": "web", "image": "$(image_of "$v")",
         "ports": [{"containerPort": 8080}],
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
for v in "${VARIANTS[@]}"; do manifests "$v"; done | kubectl apply -f - | sed 's/^/    /'

declare -A IP
for v in "${VARIANTS[@]}"; do
	wait_until "$v ready" 240 rolled_out "$v" || die "$v did not become ready"
	IP[$v]=$(kubectl get service -n "$NS" "$v" -o jsonpath='{.spec.clusterIP}')
	[[ -n ${IP[$v]} ]] || die "Service $v has no ClusterIP"
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
phase "rolling restarts under load ($RATE req/s per variant to its ClusterIP from a pod, one variant at a time)"
TIMINGS="$OUT/timings.tsv"
printf 'variant\tready_s\tgone_s\tload_s\n' >"$TIMINGS"
for v in "${VARIANTS[@]}"; do
	ip=${IP[$v]}
	info "${bold}$v${reset}: loadgen attack -rate $RATE → http://$ip/ (pod load-$v)"
	load_start=$SECONDS
	start_load "load-$v" "http://$ip/" "$RATE"
	sleep 3
	t0=$(date +%s.%N)
	kubectl rollout restart -n "$NS" "deployment/$v" | sed 's/^/    /'
	wait_until "$v rollout (new pods ready)" 300 rolled_out "$v" || die "rollout of $v did not finish"
	t_ready=$(date +%s.%N)
	wait_until "$v old pods gone" 300 pods_exactly "$v" "$REPLICAS" || die "old pods of $v did not go away"
	t_gone=$(date +%s.%N)
	sleep 3
	stop_load "load-$v" "$OUT/$v.load.json"
	awk -v v="$v" -v a="$t0" -v b="$t_ready" -v c="$t_gone" -v l=$((SECONDS - load_start)) \
		'BEGIN { printf "%s\t%.1f\t%.1f\t%d\n", v, b - a, c - a, l }' >>"$TIMINGS"
	python3 - "$OUT/$v.load.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
g = r["loadgen"]
print(f"    load: {g['requests']} requests, {g['ok']} ok, {g['failed']} failed {g['failures_by_kind'] or ''}"
      f" (loadgen: p99 {g['latency_p99_ms']} ms, {g['cpu_seconds']:.1f} s CPU in {g['wall_seconds']:.0f} s)")
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
# The records are on the nodes that ran the service: a pod on each counts them there.
nodes=$(python3 - "$OUT/pods.watch.json" <<'EOF'
import sys
sys.path.insert(0, "hack/demo")
from report import read_watch
pods = read_watch(sys.argv[1]).values()
print(" ".join(sorted({p["spec"]["nodeName"] for p in pods
                       if "app" in p["metadata"].get("labels", {}) and p.get("spec", {}).get("nodeName")})))
EOF
)
[[ -n $nodes ]] || die "no node ran the variants' pods (pod watch in $OUT/pods.watch.json)"
count_pod() { # NAME NODE
	cat <<EOF
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$1", "namespace": "$NS", "labels": {"lameduck-demo/role": "count"}},
 "spec": {"restartPolicy": "Never", "nodeName": "$2",
          "containers": [{"name": "count", "image": "$(image_of rust-web)",
                          "args": ["count-records"], "env": [{"name": "RECORDS_DIR", "value": "/records"}],
                          "volumeMounts": [{"name": "records", "mountPath": "/records", "readOnly": true}]}],
          "volumes": [{"name": "records", "hostPath": {"path": "$RECORDS_DIR", "type": "Directory"}}]}}
EOF
}
: >"$OUT/records.counts"
i=0
for node in $nodes; do
	i=$((i + 1))
	count_pod "count-records-$i" "$node" | kubectl apply -f - >/dev/null
	wait_until "records on $node" 120 pod_phase "count-records-$i" Succeeded ||
		die "counting the records on $node failed (kubectl logs -n $NS count-records-$i)"
	kubectl logs -n "$NS" "count-records-$i" >>"$OUT/records.counts"
done
for v in "${VARIANTS[@]}"; do
	printf '%s\t%d\n' "$v" "$(awk -F'\t' -v v="$v" '$1 == v { n += $2 } END { print n + 0 }' "$OUT/records.counts")"
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
python3 hack/demo/report.py --out "$OUT" --rate "$RATE" --cleanup-millis "$CLEANUP_MILLIS" \
	--grace "$GRACE" --annotation-only go-naive-lameduck --variants "${VARIANTS[@]}"

cat <<EOF

${bold}Done in $((SECONDS - STARTED))s.${reset} The cluster is still up, with the three variants running:

  export KUBECONFIG=$KUBECONFIG
  export PATH=$(dirname "$(command -v kubectl)"):\$PATH   # the kubectl and helm used
  kubectl get sdp -n $NS
  kubectl describe sdp -n $NS deployment-go-web
  kubectl get pods -n $NS -o custom-columns=NAME:.metadata.name,GRACE:.spec.terminationGracePeriodSeconds
  kubectl rollout restart -n $NS deployment/rust-web   # more observations
  make cluster-down                                    # remove the local cluster

Results: out/demo/table.md, out/demo/table.json, out/demo/shutdown-durations.png
EOF
