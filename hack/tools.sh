#!/usr/bin/env bash
# Builds the pinned command-line tools the chart needs from Go module
# sources into bin/tools/, one file per tool and version, and prints the
# path of the one asked for. A module whose go.mod has replace directives
# (which `go install` refuses) is built from a scratch module carrying them.
#
#   hack/tools.sh helm    hack/tools.sh helm-unittest    hack/tools.sh gremlins
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}
HELM_UNITTEST_VERSION=${HELM_UNITTEST_VERSION:-v1.1.2}
GREMLINS_VERSION=${GREMLINS_VERSION:-v0.6.0}
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/bin/tools"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/comet-operator/tools"

case "${1:-}" in
helm)
	module=helm.sh/helm/v3 version=$HELM_VERSION pkg=helm.sh/helm/v3/cmd/helm
	ldflags="-X helm.sh/helm/v3/internal/version.version=$version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
	;;
helm-unittest)
	module=github.com/helm-unittest/helm-unittest version=$HELM_UNITTEST_VERSION
	pkg=github.com/helm-unittest/helm-unittest/cmd/helm-unittest ldflags=""
	;;
gremlins)
	module=github.com/go-gremlins/gremlins version=$GREMLINS_VERSION
	pkg=github.com/go-gremlins/gremlins/cmd/gremlins ldflags=""
	;;
*)
	echo "usage: $0 helm|helm-unittest|gremlins" >&2
	exit 2
	;;
esac

out="$tools/$1-$version"
if [ ! -x "$out" ] && [ -x "$cache/$1-$version" ]; then
	mkdir -p "$tools"
	cp "$cache/$1-$version" "$out"
fi
if [ ! -x "$out" ]; then
	echo "tools: building $1 $version" >&2
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	(
		cd "$work"
		go mod init tools/build >/dev/null 2>&1
		go mod edit -require "$module@$version"
		gomod=$(go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
		# Carry the module's own replace directives (single-line form).
		sed -n 's/^replace[[:space:]]\{1,\}\([^[:space:]]*\)[[:space:]]\{1,\}\([^[:space:]]*\)[[:space:]]*=>[[:space:]]*\([^[:space:]]*\)[[:space:]]\{1,\}\([^[:space:]]*\)$/\1@\2=\3@\4/p' "$gomod" |
			while read -r r; do go mod edit -replace "$r"; done
		go get "$pkg@$version" >&2
		# As helm's own build does: the Kubernetes version helm assumes when
		# rendering offline follows the client-go it is built with.
		if [ "$1" != gremlins ]; then
			kminor=$(go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2)
			ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kminor"
		fi
		CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.partial" "$pkg"
	)
	mv "$out.partial" "$out"
	mkdir -p "$cache"
	cp "$out" "$cache/"
fi
echo "$out"
