#!/usr/bin/env bash
# Captures the pod fixtures of operator/tests/fixtures/pods/ (used by the unit tests of
# operator/src/observe.rs and operator/src/controller/pods.rs) from the local cluster.
#
# Usage: hack/capture-pod-fixtures.sh [OUT_DIR]   (default operator/tests/fixtures/pods)
#   WATCH_DIR=DIR keeps the raw watch streams (one file per pod) there.
#   needs make cluster-up and the lameduck release in lameduck-system (hack/install-local.sh).
#
# Every pod is created in a fixture-… namespace, watched (kubectl get -w -o json) while it
# is deleted, and the last object in which every container has terminated, before the
# kubelet's final DELETE, is saved (metadata.managedFields stripped; nothing else changed):
#   acked           rust example (SDK), CLEANUP_MILLIS=500, grace 30, requests from this host
#                   during the deregister phase; injected by the webhook
#   terminating     the same pod mid-shutdown: deletionTimestamp set, `web` still running
#   timeout         rust example, CLEANUP_MILLIS=28000, grace 30: cleanup outlasts the
#                   sidecar's release budget (G − 2 s reserve), so the report says `timeout`,
#                   and the app exits 0 before the deadline
#   killed          rust example, CLEANUP_MILLIS=20000, grace 5: SIGKILL at the deadline (137)
#   oom-killed      injected pod whose app (a static C program built here, image
#                   lameduck/fixture-alloc:dev) allocates memory from SIGTERM on, under a
#                   16 MiB limit: OOMKilled while terminating
#   no-report       built by hand (namespace labelled lameduck.dev/webhook=disabled): native
#                   sidecar `lameduck` = testapp serve, which writes no termination message
#   garbage-report  the same with testapp sidecar, whose termination message is not a report
# The files are written only when every case shows what it should (checked below).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
eval "$(e2e/cluster/env.sh)"
export KUBECONFIG

OUT=${1:-operator/tests/fixtures/pods}
NS=fixture-pods
NS_MANUAL=fixture-pods-manual
# The Rust example as make images published it (pulled from the local registry).
RUST=$(sed -n 's/^EXAMPLE_RUST_WEB=//p' .state/examples.env 2>/dev/null)
[[ -n $RUST ]] || { echo "capture-pod-fixtures: no .state/examples.env: run make images" >&2; exit 1; }
TESTAPP=lameduck/testapp:dev
ALLOC=lameduck/fixture-alloc:dev

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() {
	echo "capture-pod-fixtures: $*" >&2
	exit 1
}

helm status lameduck -n lameduck-system >/dev/null 2>&1 || die "no lameduck release in lameduck-system (hack/install-local.sh)"

work=$(mktemp -d)
watchers=()
cleanup() {
	local pid
	for pid in "${watchers[@]}"; do kill "$pid" 2>/dev/null || true; done
	kubectl delete ns "$NS" "$NS_MANUAL" --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the allocating app for oom-killed: waits for SIGTERM, then allocates until killed
cat >"$work/alloc.c" <<'EOF'
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static volatile sig_atomic_t term;
static void on_term(int sig) { (void)sig; term = 1; }
int main(void) {
	signal(SIGTERM, on_term);
	puts("waiting for SIGTERM");
	fflush(stdout);
	while (!term) pause();
	puts("SIGTERM: allocating until the OOM killer comes");
	fflush(stdout);
	for (;;) {
		char *p = malloc(1 << 20);
		if (p) memset(p, 1, 1 << 20);
	}
}
EOF
cc -static -O2 -Wall -Wextra -o "$work/fixture-alloc" "$work/alloc.c"
strip "$work/fixture-alloc"
IMAGE_SKIP_UNCHANGED=1 e2e/cluster/image.sh "$ALLOC" "$work/fixture-alloc" >/dev/null

kubectl create ns "$NS" >/dev/null
kubectl create ns "$NS_MANUAL" >/dev/null
kubectl label ns "$NS_MANUAL" lameduck.dev/webhook=disabled >/dev/null

# injected NAME GRACE CLEANUP_MILLIS: the rust example, injected by the webhook
injected() {
	cat <<EOF
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$1", "namespace": "$NS", "labels": {"app": "$1"},
              "annotations": {"lameduck.dev/inject": "true"}},
 "spec": {"terminationGracePeriodSeconds": $2,
          "containers": [{"name": "web", "image": "$RUST",
                          "env": [{"name": "CLEANUP_MILLIS", "value": "$3"}],
                          "ports": [{"containerPort": 8080}]}]}}
EOF
}
# manual NAME SIDECAR_ARGS: a native sidecar `lameduck` built by hand (no webhook)
manual() {
	cat <<EOF
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$1", "namespace": "$NS_MANUAL",
              "labels": {"app": "$1", "lameduck.dev/injected": "true"},
              "annotations": {"lameduck.dev/policy": "pod-$1"}},
 "spec": {"terminationGracePeriodSeconds": 30,
          "initContainers": [{"name": "lameduck", "image": "$TESTAPP", "imagePullPolicy": "Never",
                              "restartPolicy": "Always", "args": $2}],
          "containers": [{"name": "web", "image": "$TESTAPP", "imagePullPolicy": "Never",
                          "args": ["serve", "-listen", ":8080", "-name", "web"]}]}}
EOF
}

{
	injected acked 30 500
	injected timeout 30 28000
	injected killed 5 20000
	cat <<EOF
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "oom-killed", "namespace": "$NS", "labels": {"app": "oom-killed"},
              "annotations": {"lameduck.dev/inject": "true"}},
 "spec": {"terminationGracePeriodSeconds": 30,
          "containers": [{"name": "web", "image": "$ALLOC", "imagePullPolicy": "Never",
                          "resources": {"limits": {"memory": "16Mi"}}}]}}
EOF
	manual no-report '["serve", "-listen", ":9091", "-name", "lameduck"]'
	manual garbage-report '["sidecar", "-message", "not a report", "-name", "lameduck"]'
} >"$work/pods.json"
kubectl create -f "$work/pods.json" >/dev/null

pods=(acked timeout killed oom-killed no-report garbage-report)
ns_of() { case $1 in no-report | garbage-report) echo "$NS_MANUAL" ;; *) echo "$NS" ;; esac }

for pod in "${pods[@]}"; do
	kubectl wait -n "$(ns_of "$pod")" --for=condition=Ready "pod/$pod" --timeout=120s >/dev/null ||
		die "pod $pod not ready: $(kubectl get pod -n "$(ns_of "$pod")" "$pod" -o wide)"
	[[ " $(kubectl get pod -n "$(ns_of "$pod")" "$pod" -o jsonpath='{.spec.initContainers[*].name}') " == *" lameduck "* ]] ||
		die "pod $pod has no lameduck sidecar (was the webhook ready?)"
done
sleep 3 # the apps connect to the sidecar after they start
log "pods ready: ${pods[*]}"

for pod in "${pods[@]}"; do
	kubectl get pod -n "$(ns_of "$pod")" "$pod" -w -o json --output-watch-events >"$work/$pod.watch" 2>/dev/null &
	watchers+=($!)
done
sleep 2

# Requests from this host (the node) during acked's deregister phase: a load balancer
# that has not caught up yet.
ip=$(kubectl get pod -n "$NS" acked -o jsonpath='{.status.podIP}')
(
	end=$((SECONDS + 3))
	while ((SECONDS < end)); do
		curl -s -m 1 -o /dev/null "http://$ip:8080/" || true
		sleep 0.1
	done
) &
traffic=$!
sleep 0.5
log "deleting"
kubectl delete pod -n "$NS" acked timeout killed oom-killed --wait=false >/dev/null
kubectl delete pod -n "$NS_MANUAL" no-report garbage-report --wait=false >/dev/null
wait "$traffic"
for pod in "${pods[@]}"; do
	kubectl wait -n "$(ns_of "$pod")" --for=delete "pod/$pod" --timeout=90s >/dev/null 2>&1 ||
		die "pod $pod still there after 90 s"
done
sleep 1
for pid in "${watchers[@]}"; do kill "$pid" 2>/dev/null || true; done
watchers=()
log "all pods gone"

# The kubelet's last status update, in which every container has terminated: what the
# operator observes. After it come the kubelet's final DELETE (deletionGracePeriodSeconds
# rewritten to 0, deletionTimestamp moved) and the DELETED event, which are not kept.
final='[.[] | select(.type != "DELETED") | .object
        | select(.metadata.deletionTimestamp != null and .metadata.deletionGracePeriodSeconds > 0)
        | select((.status.containerStatuses | length) > 0)
        | select(all((.status.containerStatuses + (.status.initContainerStatuses // []))[];
                     .state.terminated != null))] | last'
# The last object in which the pod is terminating and its app container still runs.
midway='[.[] | select(.type != "DELETED") | .object
         | select(.metadata.deletionTimestamp != null)
         | select(any(.status.containerStatuses[]; .name == "web" and .state.running != null))] | last'
strip='if . == null then error("no such state in the watch") else del(.metadata.managedFields) end'
for pod in "${pods[@]}"; do
	jq -s "$final | $strip" "$work/$pod.watch" >"$work/$pod.json" || die "$pod: $(jq -c -s 'map(.type)' "$work/$pod.watch")"
done
jq -s "$midway | $strip" "$work/acked.watch" >"$work/terminating.json"

# What each capture shows, and whether it is what the case is about.
summary='{
  sidecar_exit: (.status.initContainerStatuses[] | select(.name == "lameduck") | .state.terminated.exitCode),
  report: (.status.initContainerStatuses[] | select(.name == "lameduck") | .state.terminated.message // ""
           | (try (fromjson | {outcome, phases_ms, last_accept_ms, released_ms}) catch .)),
  web: (.status.containerStatuses[] | select(.name == "web") | .state.terminated
        | {exitCode, reason, finishedAt}),
  deletionTimestamp: .metadata.deletionTimestamp,
  deletionGracePeriodSeconds: .metadata.deletionGracePeriodSeconds}'
check() { # POD JQ_CONDITION
	jq -e "$2" "$work/$1.json" >/dev/null || die "$1 does not show what it should ($2): $(jq -c "$summary" "$work/$1.json")"
}
outcome='(.status.initContainerStatuses[] | select(.name == "lameduck") | .state.terminated.message | fromjson | .outcome)'
web='(.status.containerStatuses[] | select(.name == "web") | .state.terminated)'
message='(.status.initContainerStatuses[] | select(.name == "lameduck") | .state.terminated.message // "")'
check acked "$outcome == \"acked\" and $web.exitCode == 0"
check timeout "$outcome == \"timeout\" and $web.exitCode != 137"
check killed "$web.exitCode == 137 and $web.reason != \"OOMKilled\""
check oom-killed "$web.reason == \"OOMKilled\""
check no-report "$message == \"\""
check garbage-report "$message != \"\" and ([$message | fromjson?] | length == 0)"
jq -e '.metadata.deletionTimestamp != null' "$work/terminating.json" >/dev/null || die "terminating: no deletionTimestamp"

mkdir -p "$OUT"
if [[ -n ${WATCH_DIR:-} ]]; then
	mkdir -p "$WATCH_DIR"
	cp "$work"/*.watch "$WATCH_DIR"/
fi
for name in "${pods[@]}" terminating; do
	cp "$work/$name.json" "$OUT/$name.json"
	[[ $name == terminating ]] || echo "$name: $(jq -c "$summary" "$work/$name.json")"
done
log "fixtures written to $OUT ($(kubectl version -o json | jq -r .serverVersion.gitVersion))"
