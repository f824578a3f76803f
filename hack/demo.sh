#!/usr/bin/env bash
# The main job on a fresh machine: a local single-node cluster built from
# source, the operator installed with its Helm chart, a sample CometServer
# running, and how to publish and poll from this host. Leaves the cluster up;
# `make cluster-down` removes it and restores the host.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cluster="$root/hack/local-cluster"
VERSION=${VERSION:?set VERSION (the Makefile does)}
start=$SECONDS

"$cluster" up
for image in comet-operator cometserver; do
	ctr -n k8s.io images import "$root/bin/images/$image-$VERSION.tar" >/dev/null
done
export KUBECONFIG
KUBECONFIG=$("$cluster" kubeconfig)
kubectl="$(cat "$root/bin/cluster.bins")/kubectl"
helm=$("$root/hack/tools.sh" helm)

"$helm" upgrade --install comet "$root/charts/comet-operator" --namespace comet-system --create-namespace --wait --timeout 3m >/dev/null
"$kubectl" apply -f "$root/config/samples/comet_v1alpha1_cometserver.yaml" >/dev/null
"$kubectl" wait cometserver/news --for=condition=Available --timeout=3m >/dev/null
"$kubectl" wait cometserver/news --for=condition=ConfigApplied --timeout=3m >/dev/null

ip=$("$kubectl" get service news -o jsonpath='{.spec.clusterIP}')
token=$("$kubectl" get secret news-publisher-token -o jsonpath='{.data.token}' | base64 -d)
cat <<TEXT

comet-operator demo is up in $((SECONDS - start))s.

  export KUBECONFIG=$KUBECONFIG
  alias kubectl=$kubectl
  kubectl get comet news

Publish and poll from this host, through the Service:

  curl -s -XPOST -H 'Authorization: Bearer $token' http://$ip:8081/v1/channels -d '{"name":"demo"}'
  curl -s -XPOST -H 'Content-Type: application/x-ocsigen-comet' --data 'registration=demo' http://$ip:8080/comet &
  curl -s -XPOST -H 'Authorization: Bearer $token' http://$ip:8081/v1/channels/demo/messages -d 'hello'

Steer it live (no restart): the poll above is answered 503 at once.

  kubectl patch comet news --type=merge -p '{"spec":{"activated":false}}'

Tear down and restore the host: make cluster-down
TEXT
