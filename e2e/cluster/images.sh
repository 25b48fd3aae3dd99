#!/usr/bin/env bash
# Builds the images every local cluster needs and imports them into its containerd:
#   lameduck/pause:3.10    the pod sandbox image (pause/pause.c, static)
#   lameduck/testapp:dev   the smoke suite's test program (testapp/, Go, CGO_ENABLED=0)
# `make images` runs this and then image.sh for lameduck's images (sidecar, operator,
# example apps; e2e/lameduck.mk).
#   images.sh [--if-missing]   --if-missing: skip images containerd already has
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if_missing=0
[[ "${1:-}" == --if-missing ]] && if_missing=1
have() { ((if_missing)) && ctr_k8s images ls -q 2>/dev/null | grep -x "$1" >/dev/null; }

bin="$STATE_DIR/bin"
mkdir -p "$bin"

if ! have "$PAUSE_IMAGE"; then
  cc -static -O2 -Wall -Wextra -o "$bin/pause" "$CLUSTER_HERE/pause/pause.c"
  strip "$bin/pause"
  "$CLUSTER_HERE/image.sh" "$PAUSE_IMAGE" "$bin/pause"
fi
if ! have "$TESTAPP_IMAGE"; then
  (cd "$CLUSTER_HERE/testapp" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go build -trimpath -ldflags='-s -w' -o "$bin/testapp" .)
  "$CLUSTER_HERE/image.sh" "$TESTAPP_IMAGE" "$bin/testapp"
fi
