#!/usr/bin/env bash
# The chart's monitoring (make alerts-test): `promtool check rules` and `promtool test rules`
# of charts/lameduck/files/alerts.yaml (tests in test/alerts/), the same check of the rules
# as the chart renders them into its PrometheusRule, and `helm lint` with every monitoring
# object on. promtool comes from Debian's prometheus package, unpacked into the cache by
# hack/deb-binary.sh (the package is not installed: no service is set up or started);
# helm is the cluster's pinned build (e2e/cluster/build-binaries.sh, cached).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../e2e/cluster/lib.sh
source "$ROOT/e2e/cluster/lib.sh"

PROMTOOL="$("$ROOT/hack/deb-binary.sh" prometheus /usr/bin/promtool)"
"$ROOT/e2e/cluster/build-binaries.sh" helm >&2
HELM="$HELM_BIN/helm"

cd "$ROOT"
"$PROMTOOL" check rules charts/lameduck/files/alerts.yaml
"$PROMTOOL" test rules test/alerts/lameduck.test.yaml

# The rules as the chart renders them: the PrometheusRule's spec, unindented.
on=(--set monitoring.serviceMonitor.enabled=true --set monitoring.prometheusRule.enabled=true
  --set monitoring.dashboard.enabled=true)
"$HELM" lint charts/lameduck "${on[@]}" >/dev/null
rendered="$(mktemp --suffix=.yaml)"
trap 'rm -f "$rendered"' EXIT
"$HELM" template lameduck charts/lameduck --kube-version "$K8S_VERSION" "${on[@]}" \
  --show-only templates/prometheusrule.yaml |
  sed -n '/^spec:$/,$p' | sed '1d; s/^  //' >"$rendered"
"$PROMTOOL" check rules "$rendered"
for kind in ServiceMonitor ConfigMap; do
  "$HELM" template lameduck charts/lameduck --kube-version "$K8S_VERSION" "${on[@]}" |
    grep -q "^kind: $kind$" || { echo "alerts-test: no $kind rendered with monitoring on" >&2; exit 1; }
done
# Off by default: none of them without the values.
if "$HELM" template lameduck charts/lameduck --kube-version "$K8S_VERSION" |
  grep -qE '^kind: (PrometheusRule|ServiceMonitor)$'; then
  echo "alerts-test: monitoring objects rendered with the default values" >&2
  exit 1
fi
echo "alerts-test: rules checked, unit tests passed, chart renders them"
