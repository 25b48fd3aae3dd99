#!/usr/bin/env bash
# Shows the local cluster's daemons, node and pods. Exit status 0 only when every daemon
# runs, the API server is ready and the node is Ready.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ok=1
for d in "${DAEMONS[@]}"; do
  if pid_alive "$d"; then
    printf '  %-24s running (pid %s)\n' "$d" "$(cat "$PIDS/$d.pid")"
  else
    printf '  %-24s NOT running\n' "$d"
    ok=0
  fi
done
if [[ "$(kubectl_admin get --raw=/readyz 2>/dev/null)" == ok ]]; then
  echo "  api server: ready at https://127.0.0.1:$APISERVER_PORT ($K8S_VERSION)"
  kubectl_admin get nodes -o wide || ok=0
  kubectl_admin get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -x True >/dev/null || ok=0
  kubectl_admin get pods -A -o wide
else
  echo "  api server: not reachable"
  ok=0
fi
echo "  logs: $LOGS    kubeconfig: export KUBECONFIG=$KUBECONFIG_OUT"
if ((ok)); then echo "cluster: up"; else echo "cluster: DOWN or unhealthy (make cluster-up)"; exit 1; fi
