#!/usr/bin/env bash
# HTTPS throughput of the webhook on one core with wrk, the handler latency (criterion),
# and the idle RSS of the webhook server (and of the real operator when a cluster is up).
# Usage: bench/webhook.sh   (make bench-webhook; installs wrk through apt when missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
work=$(mktemp -d)
trap 'kill "${server_pid:-}" "${operator_pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== handler latency in process (criterion, release profile)"
cargo bench --locked -p lameduck-operator --bench webhook 2>&1 | grep -E 'time:|admission handler'

echo "== HTTPS throughput, server pinned to CPU 0 (one thread), wrk on CPU 1"
cargo build --locked --release -p lameduck-operator --example webhook_bench_server
bin=target/release/examples/webhook_bench_server
[ -n "${CARGO_TARGET_DIR:-}" ] && bin=$CARGO_TARGET_DIR/release/examples/webhook_bench_server
taskset -c 0 "$bin" "$work/ca.pem" >"$work/port" &
server_pid=$!
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")
sleep 0.5
echo "idle RSS of the webhook server: $(awk '/VmRSS/ {print $2, $3}' /proc/$server_pid/status)"
body=$(tr -d '\n' < operator/tests/fixtures/admission/multi_container.json | sed 's/\\/\\\\/g; s/"/\\"/g')
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = "$body"
LUA
for conns in 4 8 32; do
  echo "-- wrk -t1 -c$conns -d20s (keep-alive connections, like the API server's)"
  taskset -c 1 wrk -t1 -c"$conns" -d20s --latency -s "$work/post.lua" "https://127.0.0.1:$port/mutate" \
    | grep -E 'Requests/sec|Latency|50%|75%|90%|99%|Non-2xx|errors'
done
echo "RSS of the webhook server after load: $(awk '/VmRSS/ {print $2, $3}' /proc/$server_pid/status)"

kubeconfig=${KUBECONFIG:-$root/.state/kubeconfig}
if [ -f "$kubeconfig" ] && (eval "$(e2e/cluster/env.sh)" && KUBECONFIG=$kubeconfig kubectl get --raw /readyz >/dev/null 2>&1); then
  echo "== idle RSS of the real operator (run, caches synced against the local cluster)"
  cargo build --locked --release -p lameduck-operator
  op=target/release/lameduck-operator
  [ -n "${CARGO_TARGET_DIR:-}" ] && op=$CARGO_TARGET_DIR/release/lameduck-operator
  KUBECONFIG=$kubeconfig POD_NAMESPACE=default RUST_LOG=warn "$op" run \
    --webhook-addr 127.0.0.1:0 --admin-addr 127.0.0.1:18089 --webhook-configuration "" \
    --cert-secret lameduck-bench-tls &
  operator_pid=$!
  for _ in $(seq 100); do curl -sf localhost:18089/readyz >/dev/null 2>&1 && break; sleep 0.2; done
  sleep 10
  echo "operator idle RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$operator_pid/status)"
else
  echo "(no cluster: run make cluster-up for the operator's idle RSS)"
fi
