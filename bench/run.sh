#!/usr/bin/env bash
# make bench: the sidecar's figures (bench/sidecar.py) from the static binaries make static
# builds; the figures are written up in README.md. The other benchmarks of this directory
# have their own targets: make bench-webhook, make bench-operator-scale.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
static=target/x86_64-unknown-linux-gnu/release
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== sidecar"
python3 bench/sidecar.py "$static/lameduck-sidecar" "$static/lameduck-example-web"
