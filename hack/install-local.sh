#!/usr/bin/env bash
# `helm upgrade --install` of charts/lameduck on the local cluster with the locally built
# images (make images), then waits until the webhook injects: the operator writes
# the caBundle after it starts, and until then pods are created uninjected (failurePolicy
# Ignore). A server-side dry-run of an annotated pod shows when it injects.
#
# Usage: hack/install-local.sh [extra helm flags…]   (needs make images)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
eval "$(e2e/cluster/env.sh)"
export KUBECONFIG

RELEASE=${RELEASE:-lameduck}
SYSTEM_NS=${SYSTEM_NS:-lameduck-system}
operator_bin=target/x86_64-unknown-linux-gnu/release/lameduck-operator
[[ -f $operator_bin ]] || {
	echo "install-local: $operator_bin missing: run make images" >&2
	exit 1
}
# A new operator binary under the same :dev tag must restart the operator pods.
op_hash=$(sha256sum "$operator_bin" | cut -c1-16)
helm upgrade --install "$RELEASE" charts/lameduck -n "$SYSTEM_NS" --create-namespace \
	--set operator.image.repository=lameduck/operator \
	--set operator.image.tag=dev \
	--set operator.image.pullPolicy=Never \
	--set sidecar.image.repository=lameduck/sidecar \
	--set sidecar.image.tag=dev \
	--set sidecar.image.pullPolicy=Never \
	--set-string "operator.podAnnotations.e2e\.lameduck\.dev/binary=$op_hash" \
	--wait --timeout 180s "$@" | sed -n '/^NOTES/q;s/^/    /p'

webhook_injects() {
	kubectl create --dry-run=server -o jsonpath='{.spec.initContainers[*].name}' -f - <<EOF | grep -qw lameduck
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "probe", "namespace": "default",
              "annotations": {"lameduck.dev/inject": "true"}},
 "spec": {"containers": [{"name": "app", "image": "lameduck/example-rust-web:dev"}]}}
EOF
}
for i in $(seq 120); do
	if webhook_injects 2>/dev/null; then
		echo "    webhook injecting after ${i}s"
		exit 0
	fi
	sleep 1
done
echo "install-local: the webhook does not inject after 120 s (kubectl logs -n $SYSTEM_NS deploy/$RELEASE)" >&2
exit 1
