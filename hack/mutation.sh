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
packages=(cometserver/wire cometserver/engine cometserver/engine/memory cometserver/channels cometserver/security cometserver/config
	cometserver/admin cometserver/ctl cometserver/publisher cometserver/longpoll controllers)

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
	# Only the package's own files: a subpackage is listed on its own, with
	# its own tests (gremlins matches paths relative to the package).
	(cd "$src" && COMET_PURE_TESTS=1 "$gremlins" unleash --workers 1 --timeout-coefficient 4 \
		--exclude-files '/' --output "$out/${p//\//_}.json" "./$p") | tee "$out/${p//\//_}.log" |
		grep -E '^(\s+)?(LIVED|TIMED OUT|NOT VIABLE)|Killed:|efficacy|coverage' || true
	eff=$(sed -n 's/.*Test efficacy: \([0-9.]*\)%.*/\1/p' "$out/${p//\//_}.log" | tail -1)
	# A survivor listed as equivalent (hack/mutation-equivalents.txt) does
	# not count against the package; any other does.
	unlisted=0
	while read -r mutator pos; do
		if ! awk -v p="$p" -v pos="$pos" -v m="$mutator" '$1 == p && $2 == pos && $3 == m { found = 1 } END { exit !found }' "$root/hack/mutation-equivalents.txt"; then
			echo "   not listed as equivalent: $p $pos $mutator"
			unlisted=$((unlisted + 1))
		fi
	done < <(sed -n 's/^ *LIVED \([A-Z_]*\) at \(.*\)$/\1 \2/p' "$out/${p//\//_}.log")
	if [ -z "$eff" ] || [ "$unlisted" -gt 0 ]; then
		failed+=("$p (${eff:-no result}%, $unlisted unlisted survivors)")
	fi
done
echo
if [ ${#failed[@]} -gt 0 ]; then
	echo "mutation: survivors not listed as equivalent: ${failed[*]}"
	exit 1
fi
echo "mutation: every survivor is a listed equivalent; results in $out"
