#!/usr/bin/env bash
# `helm upgrade --install` of lameduck on the local cluster from its registry
# (oci://localhost:5000/charts/lameduck, the images pulled by digest), as `make images`
# published them: hack/install.sh with the local cluster's kubeconfig and the pinned
# kubectl and helm.
#
# Usage: hack/install-local.sh [extra helm flags…]   (needs make images)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
eval "$("$ROOT/e2e/cluster/env.sh")"
exec "$ROOT/hack/install.sh" "$@"
