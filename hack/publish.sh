#!/usr/bin/env bash
# Publishes lameduck to an OCI registry (make publish): the operator and sidecar images and
# the Helm chart as an OCI artifact, the way a platform team installs it from there.
#
#   REGISTRY=registry.example.com/platform make publish
#   hack/publish.sh examples    the demo's images instead (make publish-examples)
#
# REGISTRY defaults to the local cluster's registry (localhost:5000). The images are built
# from the static binaries (make static) as the Dockerfiles build them: FROM scratch, the
# binary at /lameduck-operator and /lameduck-sidecar, user 65532 (e2e/cluster/image.sh,
# umoci). skopeo pushes them, `helm push` the packaged chart. No Docker daemon is needed;
# skopeo, umoci and helm are installed if missing. Pushed:
#   $REGISTRY/lameduck/operator:<appVersion>   $REGISTRY/lameduck/sidecar:<appVersion>
#   oci://$REGISTRY/charts/lameduck, version <chart version>
# and $STATE_DIR/published.env records the references, the images by digest.
# `examples` pushes the images the demo, the rollout benchmark and the e2e suite deploy:
#   $REGISTRY/lameduck/example-rust-web, example-go-web, example-go-naive, loadgen, caddy
# (tag <appVersion>; binaries from make static and make go-build, Caddy built once from its
# Go module into the cache) and records them by
# digest in $STATE_DIR/examples.env.
# Credentials are skopeo's and helm's own (`skopeo login`, `helm registry login`).
# PLAIN_HTTP=1 pushes without TLS: the default for localhost and 127.0.0.1 only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=../e2e/cluster/lib.sh
source "$ROOT/e2e/cluster/lib.sh"

REGISTRY="${REGISTRY:-localhost:5000}"
REGISTRY="${REGISTRY%/}"
case "$REGISTRY" in
  localhost:* | localhost/* | localhost | 127.0.0.1*) PLAIN_HTTP="${PLAIN_HTTP:-1}" ;;
  *) PLAIN_HTTP="${PLAIN_HTTP:-0}" ;;
esac
STATIC_DIR="$ROOT/target/x86_64-unknown-linux-gnu/release"
# What it needs, installed idempotently: skopeo, umoci and file from Debian, the pinned helm
# (built once from its Go module into the cache; the local cluster uses the same).
missing=()
for pkg in skopeo umoci file; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep 'install ok installed' >/dev/null || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
"$CLUSTER_HERE/build-binaries.sh" helm >&2
HELM="$HELM_BIN/helm"

chart_field() { sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" "$ROOT/charts/lameduck/Chart.yaml"; }
app_version="$(chart_field appVersion)"
chart_version="$(chart_field version)"
[[ -n "$app_version" && -n "$chart_version" ]] || die "no version/appVersion in charts/lameduck/Chart.yaml"

tls=(--dest-tls-verify=true)
helm_tls=()
if [[ "$PLAIN_HTTP" == 1 ]]; then
  tls=(--dest-tls-verify=false)
  helm_tls=(--plain-http)
fi

# push NAME BINARY [PATH_IN_IMAGE]: builds the image (the binary at PATH_IN_IMAGE, default
# /<its file name>), pushes it as NAME:<appVersion>, prints its digest.
push() {
  local name="$1" binary="$2" in_image="${3:-/$(basename "$2")}" archive digest_file
  [[ -x "$binary" ]] || die "$binary missing: run make static go-build"
  archive="$(IMAGE_NO_IMPORT=1 IMAGE_BINARY_PATH="$in_image" \
    "$CLUSTER_HERE/image.sh" "$name:$app_version" "$binary")"
  digest_file="$(mktemp)"
  skopeo copy --quiet "${tls[@]}" --digestfile "$digest_file" \
    "oci-archive:$archive:$app_version" "docker://$REGISTRY/$name:$app_version" >&2
  cat "$digest_file"
  rm -f "$digest_file"
}

mkdir -p "$STATE_DIR"

if [[ "${1:-}" == examples ]]; then
  go_bin="$ROOT/target/go"
  # An unmodified third-party server (Caddy, built once from its Go module into the cache).
  "$CLUSTER_HERE/build-binaries.sh" caddy >&2
  refs=()
  for spec in \
    "EXAMPLE_RUST_WEB lameduck/example-rust-web $STATIC_DIR/lameduck-example-web /lameduck-example-web" \
    "EXAMPLE_GO_WEB lameduck/example-go-web $go_bin/go-web /lameduck-example-go-web" \
    "EXAMPLE_GO_NAIVE lameduck/example-go-naive $go_bin/go-naive /lameduck-example-go-naive" \
    "LOADGEN lameduck/loadgen $go_bin/loadgen /loadgen" \
    "CADDY lameduck/caddy $CACHE_DIR/caddy-$CADDY_VERSION/bin/caddy /caddy"; do
    read -r var name binary in_image <<<"$spec"
    digest="$(push "$name" "$binary" "$in_image")"
    log "pushed $REGISTRY/$name:$app_version ($digest)"
    refs+=("$var=$REGISTRY/$name:$app_version@$digest")
  done
  {
    echo "# Written by hack/publish.sh examples: the demo's images in the registry, by digest."
    printf '%s\n' "${refs[@]}"
  } >"$STATE_DIR/examples.env"
  exit 0
fi

operator_digest="$(push lameduck/operator "$STATIC_DIR/lameduck-operator")"
sidecar_digest="$(push lameduck/sidecar "$STATIC_DIR/lameduck-sidecar")"
log "pushed $REGISTRY/lameduck/operator:$app_version ($operator_digest)"
log "pushed $REGISTRY/lameduck/sidecar:$app_version ($sidecar_digest)"

packaged="$(mktemp -d)"
trap 'rm -rf "$packaged"' EXIT
"$HELM" package "$ROOT/charts/lameduck" --destination "$packaged" >/dev/null
"$HELM" push "$packaged/lameduck-$chart_version.tgz" "oci://$REGISTRY/charts" "${helm_tls[@]}" 2>&1 |
  sed 's/^/    /' >&2
log "pushed oci://$REGISTRY/charts/lameduck version $chart_version"

cat >"$STATE_DIR/published.env" <<EOF_ENV
# Written by hack/publish.sh: what is in the registry now.
REGISTRY=$REGISTRY
PLAIN_HTTP=$PLAIN_HTTP
CHART=oci://$REGISTRY/charts/lameduck
CHART_VERSION=$chart_version
OPERATOR_REPOSITORY=$REGISTRY/lameduck/operator
OPERATOR_TAG=$app_version@$operator_digest
SIDECAR_REPOSITORY=$REGISTRY/lameduck/sidecar
SIDECAR_TAG=$app_version@$sidecar_digest
EOF_ENV
