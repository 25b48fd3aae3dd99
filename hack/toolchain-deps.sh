#!/usr/bin/env bash
# The build and test toolchain (make deps, run by make lint): Debian packages named as
# arguments via apt-get, then checks for cargo and go and adds clippy and rustfmt,
# idempotently. The local cluster's packages and Kubernetes binaries are a separate phase:
# e2e/cluster/cluster-deps.sh (make cluster-deps, run by make cluster-up).
set -euo pipefail

need_apt=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "deps: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

command -v cargo >/dev/null || { echo "deps: cargo not found; install Rust (rustup) first" >&2; exit 1; }
command -v go >/dev/null || { echo "deps: go not found; install Go first" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
