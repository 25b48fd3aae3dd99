#!/usr/bin/env bash
# Builds the pinned Kubernetes, etcd and helm binaries from their Go modules into the
# machine-wide cache:
#   $CACHE_DIR/k8s-<version>/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,
#                                 kubelet,kube-proxy,kubectl}
#   $CACHE_DIR/etcd-<version>/bin/{etcd,etcdctl}
#   $CACHE_DIR/helm-<version>/bin/helm
#   $CACHE_DIR/caddy-<version>/bin/caddy   (only when asked for: the e2e suite's third-party server)
# A component whose cache directory has a `.complete` stamp is not touched at all, so a
# warm run costs nothing. Usage: build-binaries.sh [k8s|etcd|helm|caddy]...  (default: k8s etcd helm)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
source "$HERE/versions.sh"
CACHE_DIR="${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lameduck}"

# Two cores: one package build at a time per core; static binaries, no debug info.
export GOFLAGS="-p=2 -buildvcs=false -mod=readonly"
export CGO_ENABLED=0
GO_BUILD=(go build -trimpath)

log() { printf '[build-binaries] %s\n' "$*" >&2; }

# build_component NAME VERSION MODULE_DIR LDFLAGS PKG:BIN...
build_component() {
  local name="$1" version="$2" moddir="$3" ldflags="$4"; shift 4
  local dest="$CACHE_DIR/$name-$version"
  if [[ -f "$dest/.complete" ]]; then
    log "$name $version: cached in $dest"
    return 0
  fi
  log "$name $version: building into $dest (cold build; this takes a while on 2 cores)"
  local start=$SECONDS tmp="$dest.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/bin"
  local spec pkg bin
  for spec in "$@"; do
    pkg="${spec%%:*}"; bin="${spec##*:}"
    log "  go build $pkg -> $bin"
    (cd "$moddir" && "${GO_BUILD[@]}" -ldflags "-s -w $ldflags" -o "$tmp/bin/$bin" "$pkg")
  done
  echo "$version built in $((SECONDS - start))s on $(date -u +%FT%TZ)" > "$tmp/.complete"
  rm -rf "$dest"; mv "$tmp" "$dest"
  log "$name $version: done in $((SECONDS - start))s"
}

build_k8s() {
  local v="$K8S_VERSION" minor
  minor="$(cut -d. -f2 <<<"$v")"
  # The same stamps the upstream release build sets (hack/lib/version.sh), so
  # `kubectl version` and the node's kubeletVersion report the real version.
  local ld="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  build_component k8s "$v" "$HERE/build/k8s" "$ld" \
    k8s.io/kubernetes/cmd/kube-apiserver:kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager:kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler:kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet:kubelet \
    k8s.io/kubernetes/cmd/kube-proxy:kube-proxy \
    k8s.io/kubernetes/cmd/kubectl:kubectl
}

build_etcd() {
  build_component etcd "$ETCD_VERSION" "$HERE/build/etcd" "" \
    go.etcd.io/etcd/server/v3:etcd \
    go.etcd.io/etcd/etcdctl/v3:etcdctl
}

build_helm() {
  local ld="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  build_component helm "$HELM_VERSION" "$HERE/build/helm" "$ld" \
    helm.sh/helm/v3/cmd/helm:helm
}

build_caddy() {
  build_component caddy "$CADDY_VERSION" "$HERE/build/caddy" "" \
    github.com/caddyserver/caddy/v2/cmd/caddy:caddy
}

components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(k8s etcd helm)
for c in "${components[@]}"; do
  case "$c" in
    k8s) build_k8s ;;
    etcd) build_etcd ;;
    helm) build_helm ;;
    caddy) build_caddy ;;
    *) echo "unknown component: $c" >&2; exit 2 ;;
  esac
done
