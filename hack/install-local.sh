#!/usr/bin/env bash
# `helm upgrade --install` of lameduck on the local cluster from its registry: the chart
# from oci://localhost:5000/charts/lameduck and the images pulled by digest, as `make
# publish` left them ($STATE_DIR/published.env). Then waits until the webhook injects: the
# operator writes the caBundle after it starts, and until then pods are created
# uninjected (failurePolicy Ignore). A server-side dry-run of an annotated pod shows when
# it injects.
#
# Usage: hack/install-local.sh [extra helm flags…]   (needs make images)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
eval "$(e2e/cluster/env.sh)"
export KUBECONFIG

RELEASE=${RELEASE:-lameduck}
SYSTEM_NS=${SYSTEM_NS:-lameduck-system}
published=.state/published.env
[[ -f $published ]] || {
	echo "install-local: $published missing: run make images (it publishes to the local registry)" >&2
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
