#!/usr/bin/env bash
# Fails when `make help` does not list every make target. Each target defined in the
# Makefile or in any .mk file must carry a `## description` and sit under a `##@ Area`
# header named in HELP_AREAS (Makefile): `make help` is the one list of entry points, and a
# target missing from it is one nobody finds. A .mk file that is not included fails too,
# since its targets cannot appear. Run by `make lint`; needs bash, make, grep, sed, awk.
#
# Usage: hack/check-help.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Every makefile of the tree; build output, state and dot-directories are not sources.
mapfile -t files < <(find . -path ./target -prune -o -path './target-*' -prune \
	-o -path ./out -prune -o -path './.*' -prune \
	-o -type f \( -name Makefile -o -name '*.mk' \) -print | sort)
((${#files[@]})) || { echo "check-help: no makefiles found under $root" >&2; exit 1; }

# `NAME:` at the start of a line, but not `NAME:=` (an assignment).
defined=$(grep -hE '^[a-zA-Z0-9_-]+:([^=]|$)' "${files[@]}" | sed 's/:.*//' | sort -u)

# The help text as a user sees it: not a dry run, even when called from `make -n`.
help=$(env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL "${MAKE:-make}" --no-print-directory -s help)
listed=$(awk '/^  [a-zA-Z0-9_-]+ / {print $1}' <<<"$help" | sort -u)

status=0
missing=$(comm -23 <(echo "$defined") <(echo "$listed"))
if [[ -n $missing ]]; then
	echo "check-help: targets missing from make help (add a '## description'):" >&2
	while read -r target; do echo "  $target"; done <<<"$missing" >&2
	status=1
fi

# Area headers printed by make help, against the list the Makefile orders them by.
areas=$(sed -n 's/^HELP_AREAS *:= *//p' Makefile | tr ' ' '\n' | sed '/^$/d')
while read -r area; do
	[[ -z $area ]] && continue
	if ! grep -qxF "$area" <<<"$areas"; then
		echo "check-help: make help prints area '$area', which HELP_AREAS does not list" \
			"(a target above every '##@' header prints under 'other')" >&2
		status=1
	fi
done < <(awk '/^[^ ]/ && !/^usage:/' <<<"$help")

((status == 0)) && echo "check-help: make help lists all $(wc -l <<<"$defined") targets"
exit "$status"
