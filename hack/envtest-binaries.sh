#!/usr/bin/env bash
# Builds the binaries envtest runs, etcd and kube-apiserver, from Go module
# sources (no download site is reachable), into bin/k8s/<versions>/, and
# prints that folder. A folder that is already complete is reused, so the
# slow first build (about 5 minutes on 2 cores) happens once per version.
#
#   KUBEBUILDER_ASSETS=$(hack/envtest-binaries.sh) go test ./...
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/bin/k8s/kube-$K8S_VERSION-etcd-$ETCD_VERSION"

# A per-user cache outside the checkout, keyed the same way, spares fresh
# clones (CI's among them) the rebuild.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/comet-operator/$(basename "$dest")"
complete() { [ -x "$1/kube-apiserver" ] && [ -x "$1/etcd" ]; }

if complete "$dest"; then
	echo "$dest"
	exit 0
fi
if complete "$cache"; then
	mkdir -p "$dest"
	cp "$cache/kube-apiserver" "$cache/etcd" "$dest/"
	echo "$dest"
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest"
log() { echo "envtest-binaries: $*" >&2; }

# etcd: a three-line main around the server's own entry point.
log "building etcd $ETCD_VERSION"
mkdir "$work/etcd"
cat >"$work/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
(
	cd "$work/etcd"
	go mod init envtest/etcd >/dev/null 2>&1
	go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >&2
	go mod tidy >&2
	CGO_ENABLED=0 go build -trimpath -o "$dest/etcd.partial" .
)
mv "$dest/etcd.partial" "$dest/etcd"

# kube-apiserver: k8s.io/kubernetes replaces its staging modules with local
# folders; a scratch module points each one at its published version.
log "building kube-apiserver $K8S_VERSION"
mkdir "$work/kube"
(
	cd "$work/kube"
	go mod init envtest/kube >/dev/null 2>&1
	gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
	staging_version="v0.${K8S_VERSION#1.}"
	replaces=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$gomod")
	[ -n "$replaces" ] || { log "no staging replaces found in $gomod"; exit 1; }
	args=(-require "k8s.io/kubernetes@v$K8S_VERSION")
	for m in $replaces; do
		args+=(-replace "$m=$m@$staging_version")
	done
	go mod edit "${args[@]}"
	cat >tools.go <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver/app"
GO
	go mod tidy >&2
	ldflags=""
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
		minor=${K8S_VERSION#*.}
		ldflags+=" -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
	done
	CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$dest/kube-apiserver.partial" k8s.io/kubernetes/cmd/kube-apiserver
)
mv "$dest/kube-apiserver.partial" "$dest/kube-apiserver"
mkdir -p "$cache"
cp "$dest/kube-apiserver" "$dest/etcd" "$cache/"
log "done: $dest (cached in $cache)"
echo "$dest"
