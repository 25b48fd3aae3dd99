# Shell helpers shared by make demo (hack/demo/demo.sh) and make bench-rollout
# (bench/rollout.sh): progress output, polling, Deployment and pod states, the published
# example images, the in-cluster load generator. Source it; it expects NS (the namespace)
# and STATE_DIR to be set, and REPLICAS for rolled_out.

bold=$'\033[1m' dim=$'\033[2m' reset=$'\033[0m'
[[ -t 1 ]] || bold='' dim='' reset=''
PHASE=0
STARTED=${STARTED:-$SECONDS}

# phase TITLE: a numbered step ([k/PHASES]) with the time since the start.
phase() {
	PHASE=$((PHASE + 1))
	printf '\n%s==> [%d/%d] %s%s %s(%ds)%s\n' "$bold" "$PHASE" "${PHASES:-?}" "$*" "$reset" "$dim" $((SECONDS - STARTED)) "$reset"
}
info() { printf '    %s\n' "$*"; }
die() {
	printf '\n%s: %s\n' "${SCRIPT_NAME:-$(basename "$0")}" "$*" >&2
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

# Background processes, stopped on exit.
BG_PIDS=()
cleanup_bg() {
	local p
	for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	BG_PIDS=()
}
trap cleanup_bg EXIT

# published_image VAR: a reference make publish-examples recorded ($STATE_DIR/examples.env),
# by digest: EXAMPLE_GO_NAIVE, EXAMPLE_GO_WEB, EXAMPLE_RUST_WEB, LOADGEN.
published_image() {
	sed -n "s/^$1=//p" "$STATE_DIR/examples.env" 2>/dev/null
}

# rolled_out NAME: the Deployment's pods all updated, ready, and no old pod left.
rolled_out() {
	local s gen obs upd rdy avl tot
	s=$(kubectl get deployment -n "$NS" "$1" -o jsonpath='{.metadata.generation} {.status.observedGeneration} {.status.updatedReplicas} {.status.readyReplicas} {.status.availableReplicas} {.status.replicas}')
	read -r gen obs upd rdy avl tot <<<"$s"
	echo "(updated ${upd:-0}/$REPLICAS, ready ${rdy:-0})"
	[[ $gen == "$obs" && ${upd:-0} == "$REPLICAS" && ${rdy:-0} == "$REPLICAS" && ${avl:-0} == "$REPLICAS" && ${tot:-0} == "$REPLICAS" ]]
}
pod_count() { kubectl get pods -n "$NS" -l "app=$1" --no-headers 2>/dev/null | wc -l; }
# pods_exactly NAME N: exactly N pods of app NAME (terminating ones included).
pods_exactly() {
	local n
	n=$(pod_count "$1")
	echo "($n pods)"
	[[ $n == "$2" ]]
}
# pod_phase POD PHASE: the pod is in PHASE.
pod_phase() {
	local p
	p=$(kubectl get pod -n "$NS" "$1" -o jsonpath='{.status.phase}')
	echo "(${p:-Pending})"
	[[ $p == "$2" ]]
}

# load_pod NAME URL RATE: the load generator (e2e/loadgen) in a pod of the namespace (not
# injected), so that the load comes from a pod address, as a client's would, on any
# cluster. Stopped by `kubectl exec NAME -- /loadgen stop`; its report is its log.
load_pod() {
	cat <<EOF
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$1", "namespace": "$NS", "labels": {"lameduck-demo/role": "load"}},
 "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
          "containers": [{"name": "loadgen", "image": "$(published_image LOADGEN)",
                          "args": ["attack", "-target", "$2", "-rate", "$3",
                                   "-duration", "3600s", "-timeout", "5s"],
                          "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}}}]}}
EOF
}

# start_load NAME URL RATE: starts the load pod and waits until it runs and URL answers.
start_load() {
	kubectl delete pod -n "$NS" "$1" --ignore-not-found --wait >/dev/null
	load_pod "$@" | kubectl apply -f - >/dev/null
	wait_until "$1 running" 120 pod_phase "$1" Running ||
		die "the load generator $1 did not start (kubectl describe pod -n $NS $1)"
	kubectl exec -n "$NS" "$1" -- /loadgen get "${2%/}/healthz" >/dev/null ||
		die "${2} does not answer from a pod"
}

# stop_load NAME OUT_FILE: stops the load pod and saves its report.
stop_load() {
	kubectl exec -n "$NS" "$1" -- /loadgen stop
	wait_until "$1 report" 60 pod_phase "$1" Succeeded || die "the load generator $1 did not finish"
	kubectl logs -n "$NS" "$1" >"$2"
}
