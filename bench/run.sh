#!/usr/bin/env bash
# make bench: the sidecar's figures (bench/sidecar.py) from the static binaries make static
# builds, then the kernel traffic view (bench/kernel.py, root); the figures are written up
# in README.md and docs/protocol.md. The other benchmarks of this directory
# have their own targets: make bench-webhook, make bench-operator-scale.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
static=target/x86_64-unknown-linux-gnu/release
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== sidecar"
python3 bench/sidecar.py "$static/lameduck-sidecar" "$static/lameduck-example-web"
echo "== kernel traffic view (network namespaces)"
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
  python3 bench/kernel.py "$static/lameduck-sidecar" "$static/lameduck-example-web"
else
  echo "not measured: bench/kernel.py needs root and iproute2's ip (apt-get install -y iproute2)" >&2
  exit 1
fi
