#!/usr/bin/env bash
# Runs every fuzz target for a while (FUZZTIME, default 30s) and keeps the
# inputs it found interesting in the package's testdata/fuzz/<target>/, so
# that every later `go test` replays them as seeds.
#
#   hack/fuzz.sh            FUZZTIME=5m hack/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-30s}
module=$(go list -m)
cache=$(go env GOCACHE)/fuzz

targets=(
	cometserver/wire:FuzzParseRegistration
	cometserver/wire:FuzzPayload
	cometserver/wire:FuzzParseResume
	cometserver/engine:FuzzParsePosition
	cometserver/admin:FuzzParse
	cometserver/admin:FuzzParseSeconds
	cometserver/longpoll:FuzzParseHead
	cometserver/longpoll:FuzzDifferential
)
for t in "${targets[@]}"; do
	pkg=${t%%:*} name=${t##*:}
	echo "== $pkg $name ($fuzztime)"
	go test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" "./$pkg"
	found="$cache/$module/$pkg/$name"
	if [ -d "$found" ]; then
		mkdir -p "$pkg/testdata/fuzz/$name"
		cp -n "$found"/* "$pkg/testdata/fuzz/$name/"
		echo "kept $(ls "$pkg/testdata/fuzz/$name" | wc -l) inputs in $pkg/testdata/fuzz/$name"
	fi
done
