#!/usr/bin/env bash
# Mutation testing with gremlins (built from Go module sources by
# hack/tools.sh): each mutant (a flipped comparison, a negated condition, a
# changed operator...) of a covered line is compiled in and the package's
# own tests run against it; a mutant the tests do not notice "lived".
# Efficacy is killed / (killed + lived). docs/testing.md lists the figures
# and every mutant that lives, with the reason it is equivalent.
#
#   hack/mutation.sh                     every package below
#   hack/mutation.sh cometserver/wire    the packages named
#   MUTATION_BASE=origin/main hack/mutation.sh --changed
#                                        the listed packages a change touched
#
# It is slow (about a minute a package for the small ones, much longer for
# longpoll, whose tests run once per mutant), so CI runs it only with
# CI_MUTATION=1 (see .ci/run).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The comet server's packages, and the operator's controllers package with
# only its pure-function tests (COMET_PURE_TESTS=1 skips the envtest suite,
# whose minute-long start per mutant would make a run take hours; the
# reconcile loop itself is then uncovered and not counted).
packages=(cometserver/wire cometserver/channels cometserver/security cometserver/config
	cometserver/admin cometserver/ctl cometserver/publisher cometserver/longpoll controllers)
# Minimum efficacy per package (the issue's target), checked at the end.
threshold=90

if [ "${1:-}" = --changed ]; then
	base=${MUTATION_BASE:-origin/main}
	changed=$(git diff --name-only "$base" -- '*.go' | xargs -r -n1 dirname | sort -u)
	selected=()
	for p in "${packages[@]}"; do
		grep -qx "$p" <<<"$changed" && selected+=("$p")
	done
	packages=("${selected[@]}")
	[ ${#packages[@]} -gt 0 ] || { echo "mutation: no listed package changed since $base"; exit 0; }
elif [ $# -gt 0 ]; then
	packages=("$@")
fi

gremlins=$("$root/hack/tools.sh" gremlins)
out="$root/bin/mutation"
mkdir -p "$out"
# gremlins copies the module once per worker: give it the tracked files as
# they are now, without bin/ (gigabytes of cluster binaries).
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
	[ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$src"

failed=()
for p in "${packages[@]}"; do
	echo "== mutation: $p"
	# Packages whose tests use the network or time run one mutant at a
	# time, so that load never passes for a killed mutant.
	(cd "$src" && COMET_PURE_TESTS=1 "$gremlins" unleash --workers 1 --timeout-coefficient 4 \
		--output "$out/${p//\//_}.json" "./$p") | tee "$out/${p//\//_}.log" |
		grep -E '^(\s+)?(LIVED|TIMED OUT|NOT VIABLE)|Killed:|efficacy|coverage' || true
	eff=$(sed -n 's/.*Test efficacy: \([0-9.]*\)%.*/\1/p' "$out/${p//\//_}.log" | tail -1)
	if [ -z "$eff" ] || awk -v e="$eff" -v t="$threshold" 'BEGIN { exit !(e < t) }'; then
		failed+=("$p (${eff:-no result}%)")
	fi
done
echo
if [ ${#failed[@]} -gt 0 ]; then
	echo "mutation: under ${threshold}% efficacy: ${failed[*]}"
	exit 1
fi
echo "mutation: every package at ${threshold}% efficacy or more; results in $out"
