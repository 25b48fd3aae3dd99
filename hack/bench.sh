#!/usr/bin/env bash
# Runs every benchmark; the figures are written up in README.md and docs/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
static=target/x86_64-unknown-linux-gnu/release
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "== sidecar"
python3 hack/bench-sidecar.py "$static/lameduck-sidecar" "$static/lameduck-example-web"
