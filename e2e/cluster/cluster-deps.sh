#!/usr/bin/env bash
# Installs what the local cluster needs (make cluster-deps, run by make cluster-up;
# idempotent): Debian packages for the container runtime and networking, then the pinned
# Kubernetes/etcd/helm binaries (built from source once per version into the machine-wide
# cache; a cache hit builds nothing). The build toolchain is hack/toolchain-deps.sh.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

PKGS=(containerd runc containernetworking-plugins iptables conntrack umoci openssl curl
  iproute2 file skopeo)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep 'install ok installed' >/dev/null || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "[cluster-deps] apt-get install ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's containerd package may start a system-wide instance where systemd runs; the
# cluster runs its own with separate config, root, state and socket, so both can coexist.

# The registry: Debian's docker-registry (the CNCF distribution registry), its binary only
# (installing the package would set up a system-wide service).
# shellcheck source=lib.sh
REGISTRY_BIN="$(source "$HERE/lib.sh" && echo "$REGISTRY_BIN")"
"$HERE/../../hack/deb-binary.sh" docker-registry /usr/bin/docker-registry "$REGISTRY_BIN" >/dev/null

"$HERE/build-binaries.sh" k8s etcd helm
