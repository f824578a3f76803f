#!/usr/bin/env bash
# Builds Kubernetes components and etcd from Go module sources (no download
# site is reachable) into bin/k8s/<versions>/, and prints that folder. Each
# missing component is built once per version and kept there and in a
# per-user cache, so fresh clones (CI's among them) reuse it.
#
#   hack/k8s-binaries.sh etcd kube-apiserver kubelet kubectl ...
#
# Components: etcd, and any main under k8s.io/kubernetes/cmd/ (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
root=$(cd "$(dirname "$0")/.." && pwd)
name="kube-$K8S_VERSION-etcd-$ETCD_VERSION"
dest="$root/bin/k8s/$name"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/comet-operator/$name"
log() { echo "k8s-binaries: $*" >&2; }

[ $# -gt 0 ] || set -- etcd kube-apiserver
mkdir -p "$dest"
missing=()
for c in "$@"; do
	if [ ! -x "$dest/$c" ] && [ -x "$cache/$c" ]; then
		cp "$cache/$c" "$dest/$c"
	fi
	[ -x "$dest/$c" ] || missing+=("$c")
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "$dest"
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
store() { mv "$dest/$1.partial" "$dest/$1" && mkdir -p "$cache" && cp "$dest/$1" "$cache/$1"; }

kube=()
for c in "${missing[@]}"; do
	case "$c" in
	etcd)
		# A three-line main around etcd's own entry point.
		log "building etcd $ETCD_VERSION"
		mkdir -p "$work/etcd"
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
		store etcd
		;;
	kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy | kubectl) kube+=("$c") ;;
	*)
		log "unknown component $c"
		exit 2
		;;
	esac
done
[ ${#kube[@]} -eq 0 ] && { echo "$dest"; exit 0; }

# k8s.io/kubernetes replaces its staging modules with local folders; a
# scratch module points each one at its published version.
mkdir -p "$work/kube"
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
{
	echo '//go:build tools'
	echo
	echo 'package tools'
	echo
	echo 'import ('
	for c in "${kube[@]}"; do
		case "$c" in
		kubectl) echo '	_ "k8s.io/kubectl/pkg/cmd"' ;;
		*) echo "	_ \"k8s.io/kubernetes/cmd/$c/app\"" ;;
		esac
	done
	echo ')'
} >tools.go
go mod tidy >&2
minor=${K8S_VERSION#*.}
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
	ldflags+=" -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
done
for c in "${kube[@]}"; do
	log "building $c $K8S_VERSION"
	CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$dest/$c.partial" "k8s.io/kubernetes/cmd/$c"
	store "$c"
done
log "done: $dest"
echo "$dest"
