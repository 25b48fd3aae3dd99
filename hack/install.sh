#!/usr/bin/env bash
# `helm upgrade --install` of lameduck from a registry, as `make publish` left it
# ($STATE_DIR/published.env: the chart oci://$REGISTRY/charts/lameduck and the images by
# digest), into the cluster of $KUBECONFIG, with the kubectl and helm on PATH. Then waits
# until the webhook injects: the operator writes the caBundle after it starts, and until
# then pods are created uninjected (failurePolicy Ignore). A server-side dry-run of an
# annotated pod shows when it injects.
#
# Usage: KUBECONFIG=… hack/install.sh [extra helm flags…]   (after make publish)
# hack/install-local.sh is the same for the local cluster (make lameduck-install).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${STATE_DIR:-$ROOT/.state}

[[ -n ${KUBECONFIG:-} ]] || {
	echo "install: KUBECONFIG is not set: say which cluster to install into" >&2
	exit 1
}
export KUBECONFIG
for tool in kubectl helm; do
	command -v "$tool" >/dev/null || {
		echo "install: $tool not on PATH (make cluster-deps builds the pinned ones; eval \"\$(e2e/cluster/env.sh)\" puts them first)" >&2
		exit 1
	}
done

RELEASE=${RELEASE:-lameduck}
SYSTEM_NS=${SYSTEM_NS:-lameduck-system}
published=$STATE_DIR/published.env
[[ -f $published ]] || {
	echo "install: $published missing: run make publish REGISTRY=… (make images for the local cluster)" >&2
	exit 1
}
# shellcheck source=/dev/null
source "$published"
plain_http=()
[[ ${PLAIN_HTTP:-0} == 1 ]] && plain_http=(--plain-http)
# The images by digest: a rebuilt operator rolls the operator pods, and no node keeps a
# stale copy of a tag.
helm upgrade --install "$RELEASE" "$CHART" --version "$CHART_VERSION" "${plain_http[@]}" \
	-n "$SYSTEM_NS" --create-namespace \
	--set operator.image.repository="$OPERATOR_REPOSITORY" \
	--set operator.image.tag="$OPERATOR_TAG" \
	--set sidecar.image.repository="$SIDECAR_REPOSITORY" \
	--set sidecar.image.tag="$SIDECAR_TAG" \
	--wait --timeout 180s "$@" | sed -n '/^NOTES/q;s/^/    /p'

webhook_injects() {
	kubectl create --dry-run=server -o jsonpath='{.spec.initContainers[*].name}' -f - <<EOF_POD | grep -qw lameduck
{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "probe", "namespace": "default",
              "annotations": {"lameduck.dev/inject": "true"}},
 "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}}
EOF_POD
}
for i in $(seq 120); do
	if webhook_injects 2>/dev/null; then
		echo "    webhook injecting after ${i}s"
		exit 0
	fi
	sleep 1
done
echo "install: the webhook does not inject after 120 s (kubectl logs -n $SYSTEM_NS deploy/$RELEASE)" >&2
exit 1
