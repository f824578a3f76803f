#!/usr/bin/env bash
# Installs the peers (nginx + Nchan, Pushpin) from Debian where missing, then
# runs every cometbench scenario against this checkout's comet server and the
# peers, and rewrites docs/benchmarks.md and docs/benchmarks-latency.png.
# A benchmark, not a test: it takes about 40 minutes and loads the machine.
#
#   hack/bench.sh                      # every server below
#   SERVERS=comet,nchan hack/bench.sh  # a few of them
#
# comet-nohistory, comet-resume: the comet server with history off, with
# resuming clients; comet-redis, nchan-redis: three of each on one Redis.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVERS=${SERVERS:-comet,comet-nohistory,comet-resume,comet-redis,nchan,nchan-redis,pushpin}
[[ $SERVERS == *-redis* ]] && hack/install-redis.sh
packages=()
[[ $SERVERS == *nchan* ]] && packages+=(nginx-light libnginx-mod-nchan)
[[ $SERVERS == *pushpin* ]] && packages+=(pushpin zurl)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	echo "bench: installing ${missing[*]} from Debian" >&2
	sudo=""
	[[ $(id -u) == 0 ]] || sudo=sudo
	$sudo apt-get update -qq
	# Installing them must not leave their services running: the tool runs
	# its own instances with the committed configs.
	RUNLEVEL=1 $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
	for s in nginx pushpin; do
		$sudo systemctl stop "$s" 2>/dev/null || $sudo service "$s" stop 2>/dev/null || true
	done
fi

# The load generator is a module of its own (its plotting dependencies stay
# out of the product's go.mod); it runs from the repository's root.
go -C hack/cometbench build -o "$PWD/bin/cometbench" .
exec bin/cometbench report --servers "$SERVERS" \
	--out docs/benchmarks.md --plot docs/benchmarks-latency.png "$@"
