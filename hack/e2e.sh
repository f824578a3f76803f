#!/usr/bin/env bash
# End-to-end: brings up the local cluster, loads this commit's images,
# runs the e2e suite (helm install and the rest, see test/e2e), and always
# tears the cluster down, restoring the host.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cluster="$root/hack/local-cluster"
VERSION=${VERSION:?set VERSION (the Makefile does)}

trap '"$cluster" down' EXIT
start=$SECONDS
"$cluster" up
echo "e2e: cluster up in $((SECONDS - start))s" >&2
for image in comet-operator cometserver; do
	ctr -n k8s.io images import "$root/bin/images/$image-$VERSION.tar" >/dev/null
done
bins=$(cat "$root/bin/cluster.bins")
KUBECONFIG=$("$cluster" kubeconfig) KUBECTL="$bins/kubectl" HELM=$("$root/hack/tools.sh" helm) \
	go test -tags e2e -count=1 -v -timeout 30m ./test/e2e/
