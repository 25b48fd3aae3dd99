#!/usr/bin/env bash
# Prints shell exports for using the local cluster by hand:
#   eval "$(e2e/cluster/env.sh)"
# puts the pinned kubectl and helm first on PATH and points KUBECONFIG at the cluster.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
echo "export KUBECONFIG=$KUBECONFIG_OUT"
echo "export PATH=$K8S_BIN:$HELM_BIN:$ETCD_BIN:\$PATH"
