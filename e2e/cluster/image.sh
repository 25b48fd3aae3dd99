#!/usr/bin/env bash
# Packages one static binary as an OCI image FROM scratch and imports it into the local
# cluster's containerd (namespace k8s.io), where the kubelet finds it without a pull.
#
#   image.sh NAME:TAG BINARY [ENTRYPOINT...]
#
# NAME is a short name ("lameduck/testapp") or a full reference; the image is imported as
# docker.io/NAME:TAG unless NAME has a registry part, so a manifest can say
# `image: lameduck/testapp:dev` with `imagePullPolicy: Never` (or IfNotPresent).
# The binary goes to /usr/local/bin/<basename>, or to IMAGE_BINARY_PATH when set (e.g.
# /lameduck-sidecar, where the injected startupProbe execs it, as in the Dockerfiles);
# ENTRYPOINT defaults to that path. The image runs as the non-root user 65532:65532 and has
# a world-writable /tmp.
# Set IMAGE_NO_IMPORT=1 to only build the OCI archive (printed on stdout).
# Set IMAGE_SKIP_UNCHANGED=1 to do nothing when containerd already has NAME:TAG built from
# the same binary (sha256), path and entrypoint (keeps warm runs fast).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# -ge 2 ]] || die "usage: image.sh NAME:TAG BINARY [ENTRYPOINT...]"
ref="$1" binary="$2"; shift 2
[[ "$ref" == *:* ]] || die "image reference needs a tag: $ref"
name="${ref%:*}" tag="${ref##*:}"
# Normalize like the kubelet does: no registry part means docker.io.
first="${name%%/*}"
if [[ "$name" != */* || ( "$first" != *.* && "$first" != *:* && "$first" != localhost ) ]]; then
  name="docker.io/$name"
fi
[[ -f "$binary" && -x "$binary" ]] || die "not an executable file: $binary"
if file -b "$binary" | grep 'dynamically linked' >/dev/null; then
  die "$binary is dynamically linked; images are FROM scratch and need a static binary"
fi
command -v umoci >/dev/null || die "umoci missing: run make cluster-deps"

base="$(basename "$binary")"
dest="${IMAGE_BINARY_PATH:-/usr/local/bin/$base}"
[[ "$dest" == /* ]] || die "IMAGE_BINARY_PATH must be absolute: $dest"
entry=("$@")
[[ ${#entry[@]} -gt 0 ]] || entry=("$dest")

work="$STATE_DIR/images/$(tr '/:' '__' <<<"$name:$tag")"
stamp="$(sha256sum "$binary" | cut -d' ' -f1) $dest ${entry[*]}"
if [[ "${IMAGE_SKIP_UNCHANGED:-0}" == 1 && "${IMAGE_NO_IMPORT:-0}" != 1 && -f "$work.stamp" ]] &&
  [[ "$(cat "$work.stamp")" == "$stamp" ]] &&
  ctr_k8s images ls -q 2>/dev/null | grep -x "$name:$tag" >/dev/null; then
  log "image $name:$tag unchanged (binary sha256 ${stamp:0:12}), not re-imported"
  exit 0
fi
rm -rf "$work" "$work.stamp"; mkdir -p "$work"
oci="$work/oci" bundle="$work/bundle"

umoci init --layout "$oci"
umoci new --image "$oci:$tag"
umoci unpack --image "$oci:$tag" "$bundle" >/dev/null
rootfs="$bundle/rootfs"
install -D -m 0755 "$binary" "$rootfs$dest"
install -d -m 1777 "$rootfs/tmp"
install -d -m 0755 "$rootfs/etc"
printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
umoci repack --refresh-bundle --image "$oci:$tag" "$bundle"
cfg=(--config.user 65532:65532 --config.workingdir / --clear=config.entrypoint --clear=config.cmd)
for e in "${entry[@]}"; do cfg+=(--config.entrypoint "$e"); done
umoci config --image "$oci:$tag" "${cfg[@]}"
umoci gc --layout "$oci"
tar -C "$oci" -cf "$work/image.tar" .
rm -rf "$bundle"

if [[ "${IMAGE_NO_IMPORT:-0}" == 1 ]]; then
  echo "$work/image.tar"
  exit 0
fi
[[ -S "$CONTAINERD_SOCK" ]] || die "the cluster's containerd is not running: run make cluster-up"
# The OCI index names the image by its tag only; --base-name turns that into name:tag.
ctr_k8s images import --base-name "$name" "$work/image.tar" >/dev/null
ctr_k8s images ls -q | grep -x "$name:$tag" >/dev/null || die "import of $name:$tag did not register the image"
echo "$stamp" >"$work.stamp"
log "image $name:$tag imported ($(du -h "$work/image.tar" | cut -f1))"
