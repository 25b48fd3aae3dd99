# `make help`: the targets that carry a `## description`, grouped under the `##@ Area`
# header that precedes them in their makefile. A target may live in any included .mk file;
# the areas are printed in the order of the space-separated list `-v order=...`, so that
# `make help` reads the same way whichever file defines a target. An area missing from
# that list still prints, after the others, and a target above every header prints under
# "other" (hack/check-help.sh rejects both, so neither goes unnoticed).
#
# Usage: awk -v order="Setup Build ..." -f hack/help.awk MAKEFILE...

FNR == 1 { area = "other" }

/^##@ / {
	area = substr($0, 5)
	next
}

/^[a-zA-Z0-9_-]+:.*## / {
	name = $0
	sub(/:.*/, "", name)
	desc = substr($0, index($0, "## ") + 3)
	if (!(area in count)) seen[++areas] = area
	lines[area, ++count[area]] = sprintf("  %-22s %s", name, desc)
}

function show(a,    i) {
	if (!(a in count) || (a in shown)) return
	shown[a] = 1
	printf "\n%s\n", a
	for (i = 1; i <= count[a]; i++) print lines[a, i]
}

END {
	print "usage: make TARGET"
	n = split(order, wanted, " ")
	for (i = 1; i <= n; i++) show(wanted[i])
	for (i = 1; i <= areas; i++) show(seen[i])
}
