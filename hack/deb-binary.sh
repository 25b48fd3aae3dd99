#!/usr/bin/env bash
# Unpacks one program from a Debian package into the machine-wide cache without installing
# the package (no service is set up or started, nothing else lands on the machine) and
# prints its path. Idempotent: a cached copy of the same package version is reused.
#
#   hack/deb-binary.sh PACKAGE PATH_IN_PACKAGE [DEST]
#
# e.g. `hack/deb-binary.sh prometheus /usr/bin/promtool`. The copy goes to
# $CACHE_DIR/deb/PACKAGE-VERSION/NAME, or to DEST when given (a fixed path for callers
# that must know it without asking apt, e.g. a daemon's binary).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: deb-binary.sh PACKAGE PATH_IN_PACKAGE [DEST]" >&2; exit 2; }
pkg="$1" path="$2" dest="${3:-}"
CACHE_DIR="${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/lameduck}"

candidate() { apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: *//p'; }
version="$(candidate)"
if [[ -z "$version" || "$version" == "(none)" ]]; then
  apt-get update -qq
  version="$(candidate)"
fi
[[ -n "$version" && "$version" != "(none)" ]] || {
  echo "deb-binary: Debian package $pkg is not available (apt-cache policy $pkg)" >&2
  exit 1
}
[[ -n "$dest" ]] || dest="$CACHE_DIR/deb/$pkg-${version//[:+~]/_}/$(basename "$path")"
stamp="$dest.deb-version"
if [[ -x "$dest" && -f "$stamp" && "$(cat "$stamp")" == "$pkg=$version" ]]; then
  echo "$dest"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get -o APT::Sandbox::User=root download "$pkg=$version" >/dev/null)
dpkg-deb -x "$tmp"/*.deb "$tmp/root"
[[ -f "$tmp/root$path" ]] || { echo "deb-binary: $pkg $version has no $path" >&2; exit 1; }
mkdir -p "$(dirname "$dest")"
install -m 0755 "$tmp/root$path" "$dest.new"
mv -f "$dest.new" "$dest"
echo "$pkg=$version" >"$stamp"
echo "$dest"
